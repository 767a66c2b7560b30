"""Packaged models: the demo UNet (demo_unet.pt + model card demo_unet.json) and its training script."""

__all__: list[str] = []

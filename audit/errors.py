"""The user-error family: mistakes the user can fix (a protocol, a site config, a model path, a run folder).

Every exception a user can cause by what they typed or configured derives from :class:`UserError`. The CLI
(:mod:`audit.cli`) catches the family at one boundary, prints one actionable line and exits with status
:data:`EXIT_USER_ERROR`; anything else is a bug and is reported as one. Each family member also derives from the
builtin it refines (``ValueError``, ``FileNotFoundError``), so code that catches the builtin keeps working.

The whole family lives here; the modules that raise them re-export them (``audit.protocol.ProtocolError``,
``audit.sites.SiteConfigError``, ``audit.sites.SiteDataError``, ``audit.inference.spec.ModelSpecError``,
``audit.inference.trust.UntrustedModelError``, ``audit.harmonize.privacy.PrivacyError``).

An ``OSError`` while writing the run folder or a package (no permission, a full or read-only disk) is a user
error too: :func:`is_user_os_error` says which ``errno`` values count.
"""

from __future__ import annotations

import errno

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USER_ERROR",
    "EXIT_CRITERIA",
    "UserError",
    "ProtocolError",
    "SiteConfigError",
    "SiteDataError",
    "ModelSpecError",
    "UntrustedModelError",
    "PrivacyError",
    "IncompleteRunError",
    "USER_OS_ERRNOS",
    "is_user_os_error",
]

#: Exit statuses of the ``spine-audit`` command (documented in the README).
EXIT_OK = 0
#: ``sites check`` or ``verify`` found problems, or an unexpected internal error.
EXIT_PROBLEMS = 1
#: A user error: one line on stderr says what to fix.
EXIT_USER_ERROR = 2
#: ``run --fail-on-criteria``: an acceptance criterion failed or was inconclusive.
EXIT_CRITERIA = 3


class UserError(Exception):
    """Base of every error the user can fix; the message names the field or file, what was found and what is allowed."""


class ProtocolError(UserError, ValueError):
    """A protocol that does not follow the schema, or names something that does not exist; the message names the
    field path (``statistics.primary_metric``), the allowed values and the value found."""


class SiteConfigError(UserError, ValueError):
    """A site config that does not follow the schema; the message names the field path."""


class SiteDataError(UserError, ValueError):
    """A problem with a whole site (missing metadata file, a mapped column absent), not with one case."""


class ModelSpecError(UserError, ValueError):
    """A protocol ``model:`` section or model card that does not follow the schema; the message names the field."""


class UntrustedModelError(ModelSpecError):
    """A model file or config asks for something spine-audit never does: run code, import a name outside an
    allow-list, load a program without the protocol's pinned opt-in (``audit.inference.trust``)."""


class PrivacyError(UserError, ValueError):
    """A configuration that would put identifying data in the outputs, or a missing pseudonym key."""


class IncompleteRunError(UserError, FileNotFoundError):
    """A run folder that lacks what a command needs (``report`` or ``package`` before the run finished)."""


#: ``errno`` values of an ``OSError`` that the user fixes (permissions, disk space, read-only or wrong target).
USER_OS_ERRNOS: frozenset[int] = frozenset(
    code
    for code in (
        errno.EACCES,
        errno.EPERM,
        errno.ENOSPC,
        errno.EROFS,
        getattr(errno, "EDQUOT", None),
        errno.ENOTDIR,
        errno.EEXIST,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    )
    if code is not None
)


def is_user_os_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` the user fixes (see :data:`USER_OS_ERRNOS`).

    Examples
    --------
    >>> import errno
    >>> is_user_os_error(OSError(errno.ENOSPC, "No space left on device"))
    True
    >>> is_user_os_error(OSError(errno.EIO, "Input/output error"))
    False
    """
    return isinstance(exc, OSError) and exc.errno in USER_OS_ERRNOS

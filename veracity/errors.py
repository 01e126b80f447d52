"""Every error Veracity raises on purpose.

The tree, one root::

    VeracityError                   root; callers may catch this and nothing broader
    ├── ConfigError                 bad settings, missing key files, unusable DB URL (exit 2)
    ├── InputError                  refused input: malformed CSV, payload or request (exit 1)
    │   ├── NotFound                the thing named (site, study, run, entry, model) does not exist
    │   └── Conflict                refused by existing state: already enrolled, proposed, recorded
    ├── VerificationError           something checked and found wrong (exit 1)
    │   ├── LedgerIntegrityError    an entry, chain link or checkpoint is wrong; names the seq
    │   ├── SignatureError          a signature does not verify, or the key is not trusted
    │   ├── ProofError              a Merkle inclusion or consistency proof does not verify
    │   └── ReplayMismatch          a replayed round does not give what the ledger recorded
    ├── PrivacyBudgetExceeded       training would pass a dataset's or study's epsilon (exit 1)
    ├── QueryBudgetExceeded         a requester asked a model for more predictions than allowed
    ├── ApprovalMissing             no approval from the site operator for this study (exit 1)
    ├── CryptoError                 key, HE context or ciphertext problems (exit 1)
    └── TransportError              the SuperLink or a SuperNode failed to answer (exit 1)

Functions named ``verify*`` return ``None`` and raise one of the ``VerificationError``
subclasses; they never return a bool. Public messages are short and say what to do;
details go to the log.
"""

from __future__ import annotations

__all__ = [
    "VeracityError",
    "ConfigError",
    "InputError",
    "NotFound",
    "Conflict",
    "StaleCheckpoint",
    "VerificationError",
    "LedgerIntegrityError",
    "SignatureError",
    "ProofError",
    "ReplayMismatch",
    "PrivacyBudgetExceeded",
    "QueryBudgetExceeded",
    "ApprovalMissing",
    "CryptoError",
    "TransportError",
    "exit_code_for",
]


class VeracityError(Exception):
    """Root of every error Veracity raises on purpose."""

    #: Process exit status when this error reaches the CLI.
    exit_code: int = 1


class ConfigError(VeracityError):
    """Settings, key files or a database URL that cannot be used."""

    exit_code = 2


class InputError(VeracityError):
    """Input refused: a malformed file, payload, request or wire message."""


class NotFound(InputError):
    """The site, study, run, ledger entry or model named in the input does not exist.

    The admin API answers it with 404; elsewhere it is an ordinary :class:`InputError`.
    """


class Conflict(InputError):
    """Refused because of what already exists (an enrolled site, a proposed study).

    A site enrolled twice, a study proposed twice, a signed statement recorded twice. The
    admin API answers it with 409; elsewhere it is an ordinary :class:`InputError`.
    """


class StaleCheckpoint(Conflict):
    """A signed checkpoint older (in size or time) than one another signer recorded meanwhile.

    Nothing was recorded; sign the committed head again.
    """


class VerificationError(VeracityError):
    """Something was checked and found wrong."""


class LedgerIntegrityError(VerificationError):
    """A ledger entry, chain link or checkpoint is wrong.

    Parameters
    ----------
    seq
        The first bad entry's sequence number, when one is determinable.
    reason
        What was wrong with it.
    """

    def __init__(self, reason: str, *, seq: int | None = None) -> None:
        self.seq = seq
        self.reason = reason
        where = f"entry {seq}: " if seq is not None else ""
        super().__init__(f"{where}{reason}")


class SignatureError(VerificationError):
    """A signature does not verify, or was made by a key that is not trusted."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify."""


class ReplayMismatch(VerificationError):
    """A replayed round does not reproduce what the ledger recorded for it.

    Parameters
    ----------
    reason
        What differs.
    round
        The first round that differs.
    """

    def __init__(self, reason: str, *, round: int) -> None:
        self.round = round
        self.reason = reason
        super().__init__(f"round {round}: {reason}")


class PrivacyBudgetExceeded(VeracityError):
    """Training would take a dataset or a study past its epsilon budget."""


class QueryBudgetExceeded(VeracityError):
    """A requester asked a model for more predictions than it may have (exit 1).

    Parameters
    ----------
    message
        What was refused and why.
    retry_after
        Seconds until the requester's rate allows the request again; ``None`` when its
        budget for the model is spent (only an administrator can grant more).
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ApprovalMissing(VeracityError):
    """The site operator has not approved this study (or approved different terms)."""


class CryptoError(VeracityError):
    """Key generation or loading, homomorphic-encryption context or ciphertext problems."""


class TransportError(VeracityError):
    """A service Veracity drives (the SuperLink, a SuperNode) failed or did not answer in time."""


def exit_code_for(error: BaseException) -> int:
    """Return the CLI exit status for ``error``: 1 refused or failed, 2 configuration."""
    if isinstance(error, VeracityError):
        return error.exit_code
    return 2

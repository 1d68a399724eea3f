"""User-facing errors: one line that names the offending key, file or value."""


def one_line(text: object) -> str:
    """Collapse whitespace so a message (an OS or HTTP reason, say) stays on one line."""
    return " ".join(str(text).split())


class TransferGridError(Exception):
    """Base class for errors caused by user input rather than by a bug."""


class ConfigError(TransferGridError):
    """A config key holds a value the workflow cannot use."""


class DataError(TransferGridError):
    """A dataset source is missing, empty or holds unreadable files."""


class ChecksumError(DataError):
    """A downloaded file does not match its declared sha256."""


class UnsafeArchiveError(DataError):
    """An archive member would land outside the extraction directory."""


class DivergedError(TransferGridError):
    """Training diverged: its loss is not finite, or far above the loss of uniform predictions."""

    def __init__(self, epoch: int, loss: float, reference: float):
        self.epoch, self.loss, self.reference = epoch, loss, reference
        what = "non-finite" if loss != loss or loss in (float("inf"), float("-inf")) else "diverging"
        super().__init__(
            f"{what} training loss at epoch {epoch}: {loss:.4g} (uniform predictions score {reference:.4g}); "
            "lower train.optimizer.lr"
        )

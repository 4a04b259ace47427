"""What the click commands share: an HxW option callback (parsed by
:mod:`segops.core.options`), turning OptionsError into a usage error, checking the Beam
arguments after ``--``, an output that cannot be written (full disk, permissions) shown as one
line naming the path, and the context settings every command uses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import click

from segops.core.options import OptionsError, read_hw

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def hw_callback(min_side: int = 1, max_pixels: int | None = None
                ) -> Callable[[click.Context, click.Parameter, str], tuple[int, int]]:  # fmt: skip
    """A click callback parsing 'HxW' into (H, W), sides >= ``min_side``, area <= ``max_pixels``
    (for a size that is not one options field, e.g. synth's --size)."""

    def callback(_ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
        try:
            return read_hw(value, min_side, max_pixels)
        except OptionsError as exc:
            raise click.BadParameter(str(exc), param=param) from exc

    return callback


def check_beam_args(beam_args: tuple[str, ...]) -> list[str]:
    """The arguments after ``--``, which must all be Beam options (``--name=value``); they
    configure object storage (:mod:`segops.core.storage`) for the launcher before any file access."""
    stray = [a for a in beam_args if not a.startswith("--")]
    if stray:
        raise click.UsageError(f"unexpected argument(s) {' '.join(stray)}; Beam options look like --runner=...")
    from segops.core import storage

    storage.configure(beam_args)
    return list(beam_args)


class StorageProblem(click.ClickException):
    """Object storage that cannot be used as configured: one line, exit status 2 (a usage error:
    the user fixes an option or a variable, nothing was written)."""

    exit_code = 2


def build_options(factory: Callable[..., Any], **kwargs: Any) -> Any:
    """``factory(**kwargs)``, with an OptionsError shown as a usage error naming the problem."""
    try:
        return factory(**kwargs)
    except OptionsError as exc:
        raise click.UsageError(str(exc)) from exc


@contextlib.contextmanager
def output_errors(out: str, what: str = "manifest.json") -> Iterator[None]:
    """Checks that ``out`` can be written before the block, and turns a failed write inside it
    (full disk, quota, permissions, read-only filesystem; also when a Beam worker re-raised it)
    into one line naming the path instead of a traceback. ``what`` is the file whose presence
    marks a complete run: it is written last, so a failed run leaves none."""
    from segops.core.fs import check_writable, normalise, write_error

    quiet = _QuietWriteErrors() if logging.getLogger().getEffectiveLevel() > logging.INFO else None
    for handler in logging.getLogger().handlers if quiet else ():
        handler.addFilter(quiet)
    from segops.core.storage import StorageError

    try:
        check_writable(out)
        yield
    except click.ClickException:
        raise
    except StorageError:
        raise  # the command group shows it (StorageProblem)
    except Exception as exc:
        error = write_error(exc)
        if error is None:
            raise
        where, root = normalise(str(error.filename or out)), normalise(out)
        # a path outside OUT (an input that became unreadable) is not an output problem
        verb = "write to" if where == root or where.startswith(root.rstrip("/") + "/") else "access"
        raise click.ClickException(
            f"cannot {verb} {where}: {error.strerror} (output {out}). Nothing of this run is marked complete "
            f"(no new {what}); free space or fix permissions, then rerun the same command."
        ) from exc
    finally:
        for handler in logging.getLogger().handlers if quiet else ():
            handler.removeFilter(quiet)


class _QuietWriteErrors(logging.Filter):
    """Drops Beam's traceback of a failed write (the command prints one line for it); -v keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from segops.core.fs import write_error

        return not (record.name.startswith("apache_beam") and write_error(Exception(record.getMessage())))

"""`xtl`: the command line, a thin shell over the public API (adapters_xtl/api.py).

One file per command: each parses its options, calls the library and prints. Every
user-fixable problem is an `XtlError`; `main` prints it as one message (no traceback) and exits
with code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..errors import XtlError
from .catalog import backbone, tasks
from .evaluate import eval_cmd
from .predict import predict
from .report import report
from .run import quickstart, run
from .study import study
from .suggest import suggest
from .train import train

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Which English intermediate task helps zero-shot transfer to which language?")


@app.callback()
def _global(tasks_dir: Optional[list[Path]] = typer.Option(
        None, "--tasks-dir", help="a folder of task YAML files to add to the catalog (repeatable)")):
    from ..tasks import set_default_task_folders

    set_default_task_folders(tasks_dir or None)


app.command()(train)
app.command("eval")(eval_cmd)
app.command()(predict)
app.command()(run)
app.command()(quickstart)
app.command()(report)
app.command()(tasks)
app.command()(backbone)
app.command()(study)
app.command()(suggest)


from .bench import bench  # noqa: E402
from .registry import registry_app  # noqa: E402

app.command()(bench)
app.add_typer(registry_app, name="registry")

from .language import train_language  # noqa: E402

app.command("train-language")(train_language)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one clear message and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code in this mode
        return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
    except XtlError as e:
        from rich.markup import escape

        # the message is text, not markup: a value like "[/x]" must print as itself
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        return 2
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: finished cells and checkpoints are kept; run again to resume")
        return 130
    except Exception as e:  # typer's (vendored) click exceptions: usage errors, Exit, Abort
        kind = type(e).__name__
        if kind == "Exit":
            return int(getattr(e, "exit_code", 0))
        if kind == "Abort":
            return 130
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            return int(e.exit_code)
        raise


def entry() -> None:
    sys.exit(main())

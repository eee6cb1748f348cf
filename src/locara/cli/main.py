"""The ``locara`` command: a click group whose subcommands live one module per group.

Subcommand modules are imported lazily (only the one being run), so ``locara --help``
never imports llama_cpp, numpy or httpx. Errors are rendered here, in one place:
one line, a hint, exit 1 (2 for usage errors); LOCARA_DEBUG=1 adds the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from locara import __version__
from locara.errors import LocaraError

# command name -> (module, attribute, one-line help). Add a line to add a command.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("locara.cli.run", "run", "Run a model: one answer, or an interactive chat."),
    "ls": ("locara.cli.models", "ls", "List models in the store."),
    "show": ("locara.cli.models", "show", "Show a model's manifest and GGUF metadata."),
    "device": ("locara.cli.device", "device", "Show this machine's device profile (--json)."),
    "plan": (
        "locara.cli.plan",
        "plan",
        "Explain how a model would run here: backend, quant, memory.",
    ),
    "recommend": (
        "locara.cli.recommend",
        "recommend",
        "Models for this device by tier, with speed.",
    ),
    "pull": ("locara.cli.pull", "pull", "Download a model into the store and verify it."),
    "rm": ("locara.cli.pull", "rm", "Remove a model's blobs from the store."),
    "cache": ("locara.cli.cache", "cache", "Store upkeep: ls, verify [--deep], gc, import."),
    "app": ("locara.cli.app", "app", "Apps: install, uninstall, verify, ls."),
    "search": ("locara.cli.search", "search", "Search Hugging Face for GGUF/MLX models."),
    "serve": ("locara.cli.serve", "serve", "Run the OpenAI/Ollama-compatible server (foreground)."),
    "start": ("locara.cli.serve", "start", "Start the server in the background."),
    "stop": ("locara.cli.serve", "stop", "Stop the background server."),
    "status": ("locara.cli.serve", "status", "Server status: pid, address, uptime, models."),
    "ps": (
        "locara.cli.ps",
        "ps",
        "Models the server has loaded: backend, offload, context, memory, expiry.",
    ),
    "token": ("locara.cli.token", "token", "Manage per-app API tokens for the server."),
    "worker": (
        "locara.cli.worker",
        "worker",
        "Run a llama.cpp RPC worker that takes model layers from a server elsewhere.",
    ),
    "usage": (
        "locara.cli.usage",
        "usage",
        "Usage per model from the ledger, and cloud cost saved.",
    ),
    "cleanup": (
        "locara.cli.cleanup",
        "cleanup",
        "Stored models: size, last use, status; remove stale ones.",
    ),
    "bench": (
        "locara.cli.bench",
        "bench",
        "Benchmark stored models: tok/s, first token, load, memory.",
    ),
    "convert": (
        "locara.cli.convert",
        "convert",
        "Convert a model: GGUF → MLX, HF safetensors → GGUF.",
    ),
    "setup": ("locara.cli.setup", "setup", "Check this machine and build what Locara needs."),
    "transcribe": (
        "locara.cli.transcribe",
        "transcribe",
        "Speech to text: transcribe an audio file.",
    ),
    "ocr": ("locara.cli.ocr", "ocr", "Read the text in images (OCR)."),
    "adapter": ("locara.cli.adapter", "adapter", "LoRA adapters bound to their base by digest."),
    "lineage": ("locara.cli.lineage", "lineage", "How an artifact was made, down to its roots."),
    "eval": ("locara.cli.fitness", "eval_", "Score a model (+adapters) on a task suite."),
    "scorecard": ("locara.cli.fitness", "scorecard", "Compare evaluated candidates side by side."),
    "release": ("locara.cli.release", "release", "Write a release packet: note, ML-BOM, SPDX."),
    "validate": ("locara.cli.validate", "validate", "Check a model: template, stop tokens, smoke."),
    "rag": ("locara.cli.rag", "rag", "Private document collections: hybrid search, cited answers."),
    "route": ("locara.cli.route", "route", "Router policies: check one, explain a decision."),
}


# alias -> (command, arguments put before the user's): the local-model helper's verbs.
ALIASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "models": ("ls", ()),
    "download": ("pull", ()),
    "benchmark": ("bench", ()),
    "chat": ("run", ("--interactive",)),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(ALIASES.get(cmd_name, (cmd_name,))[0])
        if entry is None:
            return None
        module, attr, _ = entry
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        # An alias keeps its own name (usage lines say `locara chat`) and gets its arguments.
        name, cmd, rest = super().resolve_command(ctx, args)
        if name in ALIASES:
            rest = [*ALIASES[name][1], *rest]
        return name, cmd, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table, so listing commands imports none of them. Each
        # alias is shown once, beside its command, not as a command of its own.
        aliases: dict[str, list[str]] = {}
        for alias, (target, _) in sorted(ALIASES.items()):
            aliases.setdefault(target, []).append(alias)
        rows = [
            (", ".join([name, *aliases.get(name, [])]), COMMANDS[name][2])
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="locara")
def cli() -> None:
    """Locara: find, download, verify, run and serve local models."""


def render_error(exc: LocaraError) -> str:
    lines = [f"error: {exc.message}"]
    if exc.hint:
        lines.append(f"  hint: {exc.hint}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn every failure into an exit code and a hint."""
    debug = os.environ.get("LOCARA_DEBUG", "").lower() in {"1", "true", "yes", "on"}
    try:
        cli.main(args=argv, prog_name="locara", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:
        _restore_line()
        return 130
    except click.UsageError as exc:
        exc.show()
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        _restore_line()
        return 130
    except BrokenPipeError:
        # A closed pipe (locara run ... | head) is not an error worth a traceback.
        _quiet_stdout()
        return 1
    except LocaraError as exc:
        if debug:
            traceback.print_exc()
        click.echo(render_error(exc), err=True)
        return 1
    except Exception as exc:  # the last line of defence: still one line and a hint
        if debug:
            traceback.print_exc()
        click.echo(f"error: unexpected {type(exc).__name__}: {exc}", err=True)
        click.echo("  hint: rerun with LOCARA_DEBUG=1 for the traceback, and report it", err=True)
        return 1
    return 0


def _restore_line() -> None:
    # Ctrl-C mid-line: end the line so the shell prompt starts clean.
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass

"""``locara run [MODEL] [PROMPT]``: one streamed answer, or an interactive chat."""

from __future__ import annotations

import sys
from dataclasses import asdict, replace

import click

from locara.backends.base import AdapterUse, Chunk, GenerationRequest, Message, Sampling
from locara.cli.common import byte_progress, echo_json, human_size, settings
from locara.cli.main import render_error
from locara.ecology.adapters import AdapterSpec, bind_loaded
from locara.engine.accounting import generation_record
from locara.engine.loader import ModelHandle, load, resolve
from locara.errors import LocaraError, UsageError
from locara.ledger import Status, record_usage
from locara.planner.plan import Plan, PlanRequest
from locara.registry.catalog import Registry
from locara.registry.refs import parse_ref
from locara.settings import Settings

CHAT_HELP = """commands:
  /bye                     leave
  /clear                   forget the conversation so far
  /set temperature 0.2     change a sampling value (temperature, top_p, top_k, min_p,
                           repeat_penalty, seed, max_tokens)
  /set system TEXT         set the system prompt (clears the conversation)
  /show                    show the current settings
  /help                    this text"""


def _split_args(cfg: Settings, args: tuple[str, ...], model: str | None) -> tuple[str, str | None]:
    """Tell MODEL from PROMPT: with one argument, it is a model only if the registry knows it."""
    if model is not None:
        if len(args) > 1:
            raise UsageError("too many arguments", 'quote the prompt: locara run -m MODEL "..."')
        return model, args[0] if args else None
    if len(args) == 2:
        return args[0], args[1]
    if len(args) > 2:
        raise UsageError("too many arguments", 'quote the prompt: locara run MODEL "your prompt"')
    if len(args) == 1:
        word = args[0]
        if " " not in word:
            try:
                ref = parse_ref(word)
            except UsageError:
                ref = None
            if ref is not None and Registry(cfg).path_of(ref.id) is not None:
                return word, None
        return cfg.default_model, word
    return cfg.default_model, None


@click.command()
@click.argument("args", nargs=-1)
@click.option("-m", "--model", default=None, help="Model reference (default: the default model).")
@click.option("--system", default=None, help="System prompt.")
@click.option("--temperature", type=float, default=None, help="Sampling temperature (>= 0).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling, in (0, 1].")
@click.option("--top-k", type=int, default=None, help="Top-k sampling (0 disables).")
@click.option("--min-p", type=float, default=None, help="Min-p sampling, in [0, 1].")
@click.option("--repeat-penalty", type=float, default=None, help="Repetition penalty (> 0).")
@click.option("--seed", type=int, default=None, help="Random seed for reproducible sampling.")
@click.option("--max-tokens", type=int, default=None, help="Most tokens to generate.")
@click.option(
    "--ctx", type=int, default=None, help="Context window in tokens (default: the plan's)."
)
@click.option("--backend", default=None, help="Backend: llama_cpp or mlx (default: the plan's).")
@click.option(
    "--gpu-layers",
    type=click.IntRange(min=-1),
    default=None,
    help="Layers to offload to the GPU; 0 for none, -1 for all (default: the plan's).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads (default: the plan's)."
)
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="ID[:SCALE]",
    help="Apply a LoRA adapter (repeat for a stack); refused unless made for this base.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer and stats as JSON.")
@click.option("--verbose", is_flag=True, help="Print the plan, speeds and timings on stderr.")
@click.option("-i", "--interactive", is_flag=True, help="Chat even when stdin is not a terminal.")
def run(
    args: tuple[str, ...],
    model: str | None,
    system: str | None,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    min_p: float | None,
    repeat_penalty: float | None,
    seed: int | None,
    max_tokens: int | None,
    ctx: int | None,
    backend: str | None,
    gpu_layers: int | None,
    threads: int | None,
    adapters: tuple[str, ...],
    as_json: bool,
    verbose: bool,
    interactive: bool,
) -> None:
    """Run MODEL on PROMPT and stream the answer; without PROMPT, chat interactively.

    `locara chat [MODEL]` is `locara run --interactive [MODEL]`.

    \b
    Examples:
      locara run "Name the capital city of France."
      locara run smollm2-135m-instruct "Say hi" --temperature 0 --json
      echo "Summarise: ..." | locara run
      locara run -i < chat-script.txt
    """
    cfg = settings()
    reference, prompt = _split_args(cfg, args, model)
    if interactive and prompt is not None:
        raise UsageError(
            "a chat (locara chat, run -i) takes no prompt",
            'type it in the chat, or get one answer with: locara run "PROMPT"',
        )
    if prompt is None and not interactive and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip() or None
    if max_tokens is not None and max_tokens <= 0:
        raise UsageError(
            f"invalid max_tokens {max_tokens}: must be > 0", "pass --max-tokens 1 or more"
        )
    if ctx is not None and ctx <= 0:
        raise UsageError(f"invalid --ctx {ctx}: must be > 0", "pass --ctx 2048, for example")
    # Validate what the user typed before spending time on loading.
    given = {
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "min_p": min_p,
        "repeat_penalty": repeat_penalty,
        "seed": seed,
    }
    Sampling.of(None, **given)
    specs = [AdapterSpec.parse(a) for a in adapters]
    if backend is not None:
        from locara.backends.registry import canonical_name, get_backend

        backend = canonical_name(backend)
        get_backend(backend)  # unknown or not installed: say so before loading anything
    # Explicit options go to the planner, which applies them and says so; one session
    # needs one slot.
    request = PlanRequest(
        n_ctx=ctx,
        features=frozenset({"generation", "lora"} if specs else {"generation"}),
        backend=backend,
        n_gpu_layers=gpu_layers,
        n_threads=threads,
        n_parallel=1,
    )
    with byte_progress(f"storing {reference}") as progress:
        resolved = resolve(cfg, reference, progress, request=request)
    sampling = Sampling.of(resolved.manifest.config.default_params, **given)
    for warning in resolved.plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    if verbose:
        for line in describe_plan(resolved.plan):
            click.echo(line, err=True)
    # Refused here, before anything is loaded: an adapter made for another base.
    uses = bind_loaded(cfg, specs, resolved, lora=True)
    handle = load(cfg, resolved)
    bind_loaded(cfg, specs, resolved, lora=handle.model.capabilities.lora)
    try:
        if prompt is None:
            if as_json:
                raise UsageError("--json needs a prompt", 'pass one: locara run --json "..."')
            _interactive(handle, system, sampling, max_tokens, verbose, uses)
        else:
            messages = ((Message("system", system),) if system else ()) + (Message("user", prompt),)
            req = GenerationRequest(
                messages=messages, max_tokens=max_tokens, sampling=sampling, adapters=uses
            )
            _answer(handle, req, as_json, verbose)
    finally:
        handle.close()


def describe_plan(plan: Plan) -> list[str]:
    """What the plan decided for this load, and why, as lines for stderr."""
    mem = f"~{human_size(plan.ram_bytes)} of a {human_size(plan.budget_bytes)} RAM budget"
    if plan.gpu_bytes:
        mem += f", {human_size(plan.gpu_bytes)} on the GPU"
    lines = [
        f"plan: {plan.model_id} {plan.quant or '-'} on {plan.backend}: context {plan.n_ctx} "
        f"x {plan.n_parallel} slot(s), KV {plan.kv_type}"
        + (", flash attention" if plan.flash_attn else "")
        + f", {plan.n_gpu_layers}/{plan.n_layers} GPU layers, threads {plan.n_threads}+{plan.n_threads_batch}, "
        f"batch {plan.n_batch}, {mem}"
    ]
    lines += [f"  why: {r}" for r in plan.reasons]
    lines += [f"  explicit: {o}" for o in plan.overrides]
    return lines


def _answer(handle: ModelHandle, req: GenerationRequest, as_json: bool, verbose: bool) -> str:
    parts: list[str] = []
    last: Chunk | None = None
    res = handle.resolved

    def record(status: Status, error: str | None = None) -> None:
        # Every request is usage, errors and Ctrl-C included: one ledger row each.
        rec = generation_record(
            handle, app="cli", surface="cli", last=last, status=status, error=error
        )
        record_usage(settings(), rec)

    try:
        for chunk in handle.model.generate(req):
            parts.append(chunk.text)
            last = chunk
            if not as_json and chunk.text:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
    except KeyboardInterrupt:
        record("cancelled")
        raise
    except LocaraError as exc:
        record("error", exc.message)
        raise
    text = "".join(parts)
    assert last is not None and last.usage is not None and last.timings is not None
    usage, timings = last.usage, last.timings
    pp, tg = timings.rates(usage)
    record("ok" if last.finish_reason != "cancelled" else "cancelled")
    stats = {
        "load_s": round(handle.load_s, 4),
        "ttft_s": round(timings.ttft_s, 4),
        "prompt_s": round(timings.prompt_s, 4),
        "generation_s": round(timings.generation_s, 4),
        "prompt_tokens_per_s": round(pp, 2),
        "generation_tokens_per_s": round(tg, 2),
    }
    if as_json:
        echo_json(
            {
                "model": res.manifest.id,
                "reference": str(res.ref),
                "sha256": res.blob.sha256,
                "quant": res.artifact.quant,
                "backend": handle.backend,
                "adapters": [
                    {"id": a.id, "sha256": a.sha256, "scale": a.scale} for a in req.adapters
                ],
                "text": text,
                "finish_reason": last.finish_reason,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.total_tokens,
                    "cached_tokens": usage.cached_tokens,
                },
                "timings": stats,
                "n_ctx": handle.model.n_ctx,
                "load_options": asdict(handle.options),
                "plan": handle.plan.to_dict(),
            }
        )
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    if verbose:
        click.echo(
            f"load {stats['load_s']:.2f} s · first token {stats['ttft_s']:.3f} s · "
            f"prompt {usage.prompt_tokens} tok at {pp:.1f} tok/s · "
            f"generated {usage.completion_tokens} tok at {tg:.1f} tok/s · "
            f"finish {last.finish_reason}",
            err=True,
        )
    return text


_SET_FIELDS = {
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "repeat_penalty": float,
    "seed": int,
}


def _interactive(
    handle: ModelHandle,
    system: str | None,
    sampling: Sampling,
    max_tokens: int | None,
    verbose: bool,
    adapters: tuple[AdapterUse, ...] = (),
) -> None:
    name = handle.resolved.manifest.id
    click.echo(f"Chatting with {name}. Type /help for commands, /bye to leave.", err=True)
    history: list[Message] = []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            click.echo("", err=True)
            return
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, rest = text.partition(" ")
            if cmd in ("/bye", "/exit", "/quit"):
                return
            if cmd == "/clear":
                history.clear()
                click.echo("(conversation cleared)", err=True)
            elif cmd == "/help":
                click.echo(CHAT_HELP, err=True)
            elif cmd == "/show":
                click.echo(
                    f"model {name}; system {system!r}; max_tokens {max_tokens}; {sampling}",
                    err=True,
                )
            elif cmd == "/set":
                key, _, value = rest.strip().partition(" ")
                try:
                    if key == "system":
                        system = value.strip() or None
                        history.clear()
                    elif key == "max_tokens":
                        n = int(value)
                        if n <= 0:
                            raise ValueError("must be > 0")
                        max_tokens = n
                    elif key in _SET_FIELDS:
                        sampling = replace(sampling, **{key: _SET_FIELDS[key](value)}).validate()
                    else:
                        click.echo(f"unknown setting {key!r}; see /help", err=True)
                        continue
                    click.echo(f"(set {key})", err=True)
                except (ValueError, UsageError) as exc:
                    click.echo(f"error: {exc}", err=True)
            else:
                click.echo(f"unknown command {cmd}; see /help", err=True)
            continue
        history.append(Message("user", text))
        messages = ((Message("system", system),) if system else ()) + tuple(history)
        req = GenerationRequest(
            messages=messages, max_tokens=max_tokens, sampling=sampling, adapters=adapters
        )
        try:
            answer = _answer(handle, req, False, verbose)
        except KeyboardInterrupt:
            # Ctrl-C stops this answer at once and returns to the prompt.
            sys.stdout.write("\n")
            history.pop()
            continue
        except LocaraError as exc:
            # A long conversation can outgrow the context: say so, keep the session.
            click.echo(render_error(exc), err=True)
            history.pop()
            continue
        history.append(Message("assistant", answer))

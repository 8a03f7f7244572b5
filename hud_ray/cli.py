"""`hud-ray run | demo | report | view | reap | image build` — the command line.

`run` prints the run directory on its last line, so scripts can do
`RUN=$(hud-ray run ... | tail -1)`. Every bad input ends in one line
`hud-ray: error: <what is wrong>` and exit code 2; rows already written are kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from hud_ray.agents import AgentSpecError
from hud_ray.results import RunDirError
from hud_ray.sweep import SweepError
from hud_ray.tasks import TaskFileError
from providers import ProviderConfigError, ProviderError


def demo_dir() -> Path:
    """examples/demo in a checkout, else the copy packaged into the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "examples" / "demo", here / "_demo"):
        if (candidate / "tasks.jsonl").is_file():
            return candidate
    raise FileNotFoundError("the bundled demo (examples/demo) is missing from this install")


def parse_options(pairs: list[str], flag: str = "--provider-opt",
                  json_keys: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """KEY=VALUE pairs. A value is JSON-decoded only where the option is declared as a
    dict or list (`json_keys`, see `provider_json_keys`): every other value stays the
    string the user typed — `command={python} -m ...` is a command, not broken JSON —
    and the provider's pydantic model turns "4" or "true" into its declared type."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r}: expected KEY=VALUE")
        if key not in json_keys:
            options[key] = value
            continue
        try:
            options[key] = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{flag} {pair!r}: the value is not valid JSON ({exc})") from None
    return options


def provider_json_keys(provider: str) -> frozenset[str]:
    """Options of `provider` declared as a dict, list or model (e.g. modal's `env`,
    `secrets`, daytona's `resources`): the ones whose value is JSON on the command line."""
    from providers import provider_class

    fields = provider_class(provider).Options.model_fields
    return frozenset(name for name, field in fields.items() if _is_container(field.annotation))


def _is_container(annotation: Any) -> bool:
    import typing

    from pydantic import BaseModel

    origin = typing.get_origin(annotation)
    if annotation in (dict, list, tuple, set) or origin in (dict, list, tuple, set):
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True  # a nested model (daytona's `resources`) is given as a JSON object
    return any(_is_container(arg) for arg in typing.get_args(annotation)
               if origin is not None and origin not in (dict, list, tuple, set))


def provider_options(args: argparse.Namespace, provider: str) -> dict[str, Any]:
    return parse_options(args.provider_opt, json_keys=provider_json_keys(provider))


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not match:
        raise ValueError(f"--older-than {text!r}: expected e.g. 90s, 30m, 2h, 1d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"hud-ray: error: {message} (see `{self.prog} --help`)\n")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="local", help="sandbox provider (default: local)")
    p.add_argument("--provider-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="provider option, repeatable (e.g. env_file=env.py)")
    p.add_argument("--concurrency", type=int, default=8, help="sandboxes at once (slots)")
    p.add_argument("--workers", type=int, default=None, help="Ray worker actors (default: auto)")
    p.add_argument("--repeats", type=int, default=1, help="rollouts per task (a group)")
    p.add_argument("--out", default="runs", help="directory holding run directories")
    p.add_argument("--run-id", default=None, help="name of the run directory")
    p.add_argument("--resume", action="store_true", help="skip rollout_keys already written")
    p.add_argument("--timeout", type=float, default=600.0, help="per-rollout deadline, s "
                   "(from the create grant: waiting for one is not charged to it)")
    p.add_argument("--throttle-timeout", type=float, default=600.0,
                   help="longest wait for a create grant (live cap / create rate), s; "
                        "then quota_error, retried")
    p.add_argument("--max-attempts", type=int, default=3, help="tries for infra failures")
    p.add_argument("--max-failures", default=None, metavar="N|P%",
                   help="stop the run after N failed rollouts (or more than P%%)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--create-rate", type=float, default=None,
                   help="governor: sandbox creates per second for this account")
    p.add_argument("--live-cap", type=int, default=None,
                   help="governor: most live sandboxes at once for this account")
    p.add_argument("--governor-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="other governor policy settings (e.g. run_lease_s=30)")
    p.add_argument("--warm", type=float, default=None, metavar="DEPTH",
                   help="sandboxes kept warm per slot (default: 1 for local/sim, 0 for "
                        "providers that bill idle sandboxes)")
    p.add_argument("--llm-limit", action="append", default=[], metavar="KEY=VALUE",
                   help="govern the agent's model endpoint cluster-wide: max_concurrent=N, "
                        "rpm=N, tpm=N (AIMD on 429/503, Retry-After honoured)")
    p.add_argument("--keep-raw", action="store_true",
                   help="keep raw model responses in the steps (large; off by default)")
    p.add_argument("--price-table", default=None, metavar="FILE",
                   help="YAML/JSON {model: {input: $/1M tokens, output: $/1M tokens}} for "
                        "cost_usd, over the built-in table (hud_ray/prices.py)")
    p.add_argument("--no-probe", action="store_true",
                   help="fan out at once, without first waiting for one sandbox's env to "
                        "answer hello (a broken env then fails every rollout)")
    p.add_argument("--no-governor", action="store_true",
                   help="no cluster-wide governor, ledger or reaper (benchmarks only)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hud-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run every task of a task file")
    run.add_argument("tasks", help="task file: HUD rows (.jsonl, .json, .parquet) or a hud "
                     "tasks.py")
    run.add_argument("--agent", required=True,
                     help="pkg.mod:attr, file.py:attr, rule, nop, or hud:pkg.mod:AgentClass")
    run.add_argument("--agent-config", default=None, metavar="FILE",
                     help="agent settings, YAML or JSON (hud agents: model, base_url, "
                          "api_key_env, max_steps, grade_errors, ...)")
    run.add_argument("--agent-opt", action="append", default=[], metavar="KEY=VALUE",
                     help="one agent setting, repeatable, over --agent-config "
                          "(e.g. model=gpt-4o-mini, api_key_env=OPENAI_API_KEY)")
    _add_run_args(run)
    demo = sub.add_parser("demo", help="the bundled demo on the local provider")
    _add_run_args(demo)
    demo.set_defaults(concurrency=8, repeats=1)
    sweep = sub.add_parser("sweep", help="a grid of tasksets x agents x providers x repeats")
    sweep.add_argument("sweep_file", help="sweep YAML (see hud_ray/sweep.py)")
    sweep.add_argument("--out", default=None, help="directory holding run directories")
    sweep.add_argument("--run-id", default=None, help="default: the sweep's name")
    sweep.add_argument("--resume", action="store_true")
    sweep.add_argument("--concurrency", type=int, default=None)
    sweep.add_argument("--workers", type=int, default=None)
    sweep.add_argument("--no-progress", action="store_true")
    report = sub.add_parser("report", help="summarise a run directory")
    report.add_argument("run_dir")
    report.add_argument("--json", action="store_true")
    view = sub.add_parser("view", help="a live web viewer over run directories")
    view.add_argument("paths", nargs="*", default=["runs"], metavar="RUNS_DIR|RUN_DIR")
    view.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    view.add_argument("--host", default="127.0.0.1",
                      help="any host but loopback requires the token it prints")
    view.add_argument("--export", default=None, metavar="DIR",
                      help="write a static bundle to DIR (opens from disk) instead of serving")
    reap = sub.add_parser("reap", help="destroy sandboxes a crashed run left behind")
    reap.add_argument("--provider", default=None, help="one provider (default: every one)")
    reap.add_argument("--provider-opt", action="append", default=[], metavar="KEY=VALUE")
    reap.add_argument("--run-id", default=None)
    reap.add_argument("--older-than", default=None, metavar="DURATION")
    reap.add_argument("--dry-run", action="store_true")
    image = sub.add_parser("image", help="env images on the local Docker daemon")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser(
        "build", help="build DIR/Dockerfile.hud (else DIR/Dockerfile)",
        description="Build DIR/Dockerfile.hud (else DIR/Dockerfile) on the local daemon. A DIR "
        "with a requirements.txt whose Dockerfile copies wheelhouse/ first gets "
        "DIR/wheelhouse/ filled by pip download for the base image's Python, so the image "
        "installs offline (pip install --no-index --find-links).")
    build.add_argument("dir", help="directory holding Dockerfile.hud or Dockerfile")
    build.add_argument("--tag", default=None,
                       help="image tag (default: hudray-local/<dir>:<content hash>)")
    build.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    return parser


def _failure_budget(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    if text.endswith("%") and re.fullmatch(r"\d+(\.\d+)?", text[:-1]):
        return {"max_failure_fraction": float(text[:-1]) / 100}
    if not text.isdigit():
        raise ValueError(f"--max-failures {text!r}: expected N or P%")
    return {"max_failures": int(text)}


def governor_policy(args: argparse.Namespace) -> dict[str, Any] | bool:
    if args.no_governor:
        return False
    policy: dict[str, Any] = {}
    for key, value in parse_options(args.governor_opt, "--governor-opt").items():
        try:
            policy[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"--governor-opt {key}={value!r}: expected a number") from None
    if args.create_rate is not None:
        policy["create_rate"] = args.create_rate
    if args.live_cap is not None:
        policy["live_cap"] = args.live_cap
    return policy or True


def load_price_table(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import yaml

    from hud_ray.prices import check_prices

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"--price-table {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise ValueError(f"--price-table {path}: malformed: {exc}") from None
    return check_prices(data, where=f"--price-table {path}")


def cmd_run(args: argparse.Namespace, tasks: str, agent: str) -> int:
    from hud_ray.agents.config import load_agent_config
    from hud_ray.api import plan_run
    from hud_ray.report import report_run

    agent_config = load_agent_config(getattr(args, "agent_config", None),
                                     getattr(args, "agent_opt", []))
    plan = plan_run(
        tasks, agent, args.provider, agent_config=agent_config or None,
        concurrency=args.concurrency, repeats=args.repeats,
        out=args.out, run_id=args.run_id, resume=args.resume, workers=args.workers,
        timeout_s=args.timeout, throttle_timeout_s=args.throttle_timeout,
        max_attempts=args.max_attempts,
        progress=not args.no_progress, governor=governor_policy(args), warm=args.warm,
        probe=not args.no_probe, keep_raw=args.keep_raw,
        llm_limits=parse_options(args.llm_limit, "--llm-limit") or None,
        prices=load_price_table(args.price_table),
        provider_options=provider_options(args, args.provider),
        **_failure_budget(args.max_failures),
    )
    print(f"run directory: {plan.run_dir}", file=sys.stderr, flush=True)
    try:
        for _ in plan.stream():
            pass
    except (TaskFileError, ProviderConfigError) as exc:
        # A bad row past the plan-time scan, or a task the provider refuses mid-run:
        # the run stops there, and what it wrote stays.
        from hud_ray.scheduler import RunAborted

        raise RunAborted(str(exc)) from None
    print(report_run(plan.run_dir))
    print(plan.run_dir.resolve())
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from hud_ray.report import report_run
    from hud_ray.sweep import load_sweep, stream_sweep

    config = load_sweep(args.sweep_file)
    run_dir = Path(args.out or config.out) / (args.run_id or config.name)
    print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
    for _ in stream_sweep(args.sweep_file, run_id=args.run_id, out=args.out,
                          resume=args.resume, progress=not args.no_progress,
                          concurrency=args.concurrency, workers=args.workers):
        pass
    print(report_run(run_dir))
    print(run_dir.resolve())
    return 0


def cmd_reap(args: argparse.Namespace) -> int:
    """`reap --provider P`: that provider, any failure is the one error line. Without
    `--provider`: every provider that loads and has credentials, the others named as
    skipped; one provider failing does not stop the rest (exit 1 if any failed)."""
    from providers import LABEL_RUN, available, provider_class

    labels = {LABEL_RUN: args.run_id} if args.run_id else {}
    min_age = parse_duration(args.older_than) if args.older_than else 0.0
    if args.provider:
        provider = _reap_provider(args.provider, args)
        total = asyncio.run(_reap_one(provider, labels, min_age, args.dry_run))
        print(f"{'would destroy' if args.dry_run else 'destroyed'} {total} sandbox(es)")
        return 0
    total, skipped, failed = 0, [], []
    for name in available():
        try:
            if not provider_class(name).owns_sandboxes:
                continue
            provider = _reap_provider(name, args)
        except ProviderConfigError as exc:
            skipped.append(name)
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        try:
            total += asyncio.run(_reap_one(provider, labels, min_age, args.dry_run))
        except Exception as exc:  # one account's outage must not hide the others' leaks
            failed.append(name)
            print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    verb = "would destroy" if args.dry_run else "destroyed"
    print(f"{verb} {total} sandbox(es)"
          + (f"; skipped {', '.join(skipped)}" if skipped else "")
          + (f"; failed {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _reap_provider(name: str, args: argparse.Namespace) -> Any:
    from providers import get_provider

    provider = get_provider(name, **provider_options(args, name))
    provider.check_credentials()
    return provider


async def _reap_one(provider: Any, labels: dict[str, str], min_age: float, dry: bool) -> int:
    try:
        handles = [h for h in await provider.list(labels)
                   if time.time() - h.created_at >= min_age]
        for handle in handles:
            verb = "would destroy" if dry else "destroying"
            print(f"{provider.name}: {verb} {handle.sandbox_id} {handle.labels}")
            if not dry:
                await provider.destroy(handle)
        return len(handles)
    finally:
        await provider.close()


def cmd_image_build(args: argparse.Namespace) -> int:
    from hud_ray.image import build_image

    build_args = {k: str(v) for k, v in parse_options(args.build_arg, "--build-arg").items()}
    print(build_image(args.dir, args.tag, build_args))
    return 0


def _scrubbed(args: argparse.Namespace, exc: BaseException) -> str:
    """The error's text without the secret values given on this command line."""
    from hud_ray.redact import run_scrubber

    try:
        options = provider_options(args, args.provider)
    except (AttributeError, ValueError, ProviderError):
        options = {}
    return run_scrubber(options, {}).text(str(exc))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, args.tasks, args.agent)
        if args.command == "demo":
            return cmd_run(args, str(demo_dir() / "tasks.jsonl"), "rule")
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "report":
            from hud_ray.report import report_run

            print(report_run(args.run_dir, as_json=args.json))
            return 0
        if args.command == "view":
            from hud_ray.view.cli import cmd_view

            return cmd_view(args)
        if args.command == "reap":
            return cmd_reap(args)
        if args.command == "image":
            return cmd_image_build(args)
    except KeyboardInterrupt:
        print("hud-ray: interrupted; in-flight sandboxes were torn down", file=sys.stderr)
        return 130
    except (TaskFileError, ProviderError, RunDirError, AgentSpecError, SweepError, ValueError,
            FileNotFoundError) as exc:
        print(f"hud-ray: error: {_scrubbed(args, exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from hud_ray.scheduler import RunAborted

        if isinstance(exc, RunAborted):
            print(f"hud-ray: run stopped: {_scrubbed(args, exc)} (rows written so far are kept)",
                  file=sys.stderr)
            return 1
        raise
    return 2


if __name__ == "__main__":
    sys.exit(main())

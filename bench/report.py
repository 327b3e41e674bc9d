"""The docs' benchmark tables and numbers, generated from bench/results/*.json (one source per number).

    python -m bench.report            # rewrite every generated part of README.md and docs/*.md
    python -m bench.report --check    # exit 1 naming every part that disagrees with its JSON
    python -m bench.report --commands # the command that wrote each results file (to measure them all again)

A generated part sits between markers in the Markdown; the opening marker names what goes there:

    <!-- bench:table official-training -->  ...table...  <!-- /bench -->
    <!-- bench:value official summary.training.B6.fp32.same_allocator.ratio .2f -->0.79<!-- /bench -->

``bench:table NAME [ARGS]`` is one of :data:`TABLES` (a Markdown table followed by the line that says
where and when it was measured, with which command); ``bench:value FILE PATH FORMAT`` is one number of
``bench/results/FILE.json``: PATH is dot-separated keys, where ``rows[key=value,...]`` picks the one
row that matches; FORMAT is a Python format spec (``.2f``, ``.0f``, ``,d``), or ``met`` (a target's
true / false as met / not met). tests/test_bench_report.py
fails when a committed part differs from what its JSON gives.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

ROOT = RESULTS_DIR.parent.parent
MARKER = re.compile(r"<!-- bench:(?P<kind>table|value) (?P<args>[^>]*?) -->(?P<body>.*?)<!-- /bench -->", re.DOTALL)
ROW_SELECTOR = re.compile(r"(?P<key>\w+)\[(?P<match>[^\]]*)\]")


class ReportError(ValueError):
    """A marker that names an unknown table, a missing file or a path that is not in it."""


LOADED: dict[str, dict[str, Any]] = {}  # the results files read so far, by name


def results(name: str) -> dict[str, Any]:
    if name not in LOADED:
        path = RESULTS_DIR / f"{name}.json"
        if not path.is_file():
            raise ReportError(f"{path} does not exist (run the benchmark with --out bench/results/{name}.json)")
        LOADED[name] = json.loads(path.read_text())
    return LOADED[name]


def lookup(data: Any, path: str) -> Any:
    """``data`` at a dot-separated ``path``; ``rows[variant=B6,mode=fp32]`` is the one matching row."""
    for part in path.split("."):
        if (selector := ROW_SELECTOR.fullmatch(part)) is not None:
            wanted = dict(item.split("=", 1) for item in selector["match"].split(","))
            matches = [row for row in data[selector["key"]] if all(str(row.get(k)) == v for k, v in wanted.items())]
            if len(matches) != 1:
                raise ReportError(f"{part}: {len(matches)} rows match, expected one")
            data = matches[0]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise ReportError(f"no {part!r} in {path}")
    return data


def value(name: str, path: str, spec: str) -> str:
    """One value of ``bench/results/NAME.json`` formatted with ``spec``; ``met`` writes a boolean as met / not met."""
    try:
        found = lookup(results(name), path)
        if spec == "met":
            if not isinstance(found, bool):
                raise ReportError(f"{name}.json {path}: format met needs true or false, not {found!r}")
            return "met" if found else "not met"
        return format(found, spec)
    except (KeyError, TypeError) as error:
        raise ReportError(f"{name}.json {path}: {error}") from error


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def load_averages(data: dict[str, Any]) -> list[float]:
    """Every 1-minute load average a results file recorded (before and after each process)."""
    loads = [row[key] for part in ("rows", "training", "inference") for row in data.get(part, [])
             for key in ("load_before", "load_after") if key in row]
    return loads + [data[key] for key in ("load_before", "load_after") if key in data]


def measured(*names: str) -> str:
    """The line under a table: when, on what, at which load, with which command."""
    parts = []
    for name in names:
        data = results(name)
        machine = data.get("machine", {})
        loads = load_averages(data)
        load = f", 1-minute load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
        command = f": `{data['command']}`" if "command" in data else ""
        code = data.get("ours") or {}
        commit = f", code at {code['commit'][:10]}{' + changes' if code['modified'] else ''}" if code.get("commit") \
            else ""
        parts.append(f"`bench/results/{name}.json`, {machine.get('date', 'date not recorded')}, "
                     f"{machine.get('cpu', '?')} ({machine.get('logical_cpus', '?')} logical CPUs), "
                     f"torch {machine.get('torch', '?')}{commit}{load}{command}")
    return "Measured: " + "; ".join(parts) + "."


def seconds(stats: dict[str, Any] | None) -> str:
    return "" if stats is None else f"{stats['median']:.2f}"


def spread(stats: dict[str, Any]) -> str:
    return f"{stats['min']:.2f}-{stats['max']:.2f}"


def train_step_table(*names: str) -> str:
    """Rows of bench.train_step results: seconds per iteration and its parts, the first (compiling) iteration,
    peak memory, load."""
    rows = []
    for name in names:
        for row in results(name)["rows"]:
            if "failed" in row:
                rows.append([row["variant"], row["mode"], row["allocator"], "", f"failed: {row['failed']}",
                             *[""] * 7])
                continue
            rows.append([row["variant"], row["mode"], row["allocator"], f"{row['generator_parameters']:,}",
                         f"**{seconds(row['iteration_s'])}**", spread(row["iteration_s"]), seconds(row["g_step_s"]),
                         seconds(row["d_step_s"]), seconds(row.get("generator_forward_backward_s")),
                         f"{row['first_iteration_s']:.1f}", f"{row['peak_memory_mib']:.0f}",
                         f"{row['load_before']}-{row['load_after']}"])
    return markdown_table(["model", "mode", "allocator", "G parameters", "iteration s (median)", "min-max s",
                           "G step s", "D step s", "G fwd+bwd s", "first iteration s", "peak RSS MiB",
                           "load 1 min"], rows) + "\n\n" + measured(*names)


def inference_table(*names: str) -> str:
    """Rows of bench.inference results: seconds per batch, images/s, peak memory."""
    rows = []
    for name in names:
        for row in results(name)["rows"]:
            if "failed" in row:
                rows.append([row["variant"], row["mode"], f"{row['width']}x{row['height']}", row["batch"],
                             f"failed: {row['failed']}", *[""] * 4])
                continue
            rows.append([row["variant"], row["mode"], f"{row['width']}x{row['height']}", row["batch"],
                         f"{row['batch_s']['median']:.3f}", f"**{row['images_per_second']:.2f}**",
                         f"{row['first_call_s']:.1f}", f"{row['peak_memory_mib']:.0f}",
                         f"{row['load_before']}-{row['load_after']}"])
    return markdown_table(["model", "mode", "size", "batch", "s per batch (median)", "images/s", "first call s",
                           "peak RSS MiB", "load 1 min"], rows) + "\n\n" + measured(*names)


MODE_NAMES = {"fp32": "exact fp32", "fp32-cl": "fp32 + channels_last", "bf16-cl": "bf16 + channels_last"}


def official_training() -> str:
    """Per code and mode: the official and our medians, ours / official with each allocator, the target."""
    data = results("official")
    rows = []
    for variant, entries in data["summary"]["training"].items():
        code = entries["code"]
        for mode, entry in entries["modes"].items():
            same = entry["same_allocator"]
            rows.append([f"{variant} / official {code}", mode, f"{entries['official_s']['system']:.2f}",
                         f"{entries['official_s']['reuse']:.2f}", f"**{entry['ours_s']:.2f}**",
                         f"{entry['as_shipped']['ratio']:.2f}x", f"**{same['ratio']:.2f}x** "
                         f"({min(same['per_round']):.2f}-{max(same['per_round']):.2f})",
                         f"<= {same['target']:.2f}x: {'met' if same['target_met'] else '**not met**'}"])
    return markdown_table(["ours / theirs", "our mode", "official s (glibc default)", "official s (heap reuse)",
                           "ours s (heap reuse)", "ours / official as shipped",
                           "ours / official, same allocator (per round)", "target"], rows) + "\n\n" + \
        measured("official")


def readme_performance() -> str:
    """The README's few lines: B6 beside the official DAGAN code per precision, training and inference."""
    data = results("official")
    training = data["summary"]["training"]["B6"]
    rows = [[f"training iteration, {MODE_NAMES[mode]} (s)", f"**{entry['ours_s']:.2f}**",
             f"{training['official_s']['reuse']:.2f}", f"**{entry['same_allocator']['ratio']:.2f}x**"]
            for mode, entry in training["modes"].items()]
    size = f"{data['settings']['inference_width']}x{data['settings']['inference_height']}"
    for batch, entries in data["summary"]["inference"].items():
        for mode, entry in entries.items():
            rows.append([f"generator at {size}, batch {batch.removeprefix('batch')}, {MODE_NAMES[mode]} (images/s)",
                         f"**{entry['ours_images_per_second']:.3g}**", f"{entry['official_images_per_second']:.3g}",
                         f"**{1 / entry['ratio']:.2f}x** the speed"])
    loads = load_averages(data)
    b6_over_b1 = ", ".join(f"{MODE_NAMES[mode]} {entry['ratio']:.2f}x"
                           for mode, entry in data["summary"]["b6_over_b1"].items())
    return markdown_table(["B6 (DAGAN), Cityscapes layout", "ours", "official DAGAN code", "ours / official"], rows) + \
        (f"\n\nOne run beside the official code, alternating processes, same torch, threads and allocator "
         f"(`python -m bench.official`, {data['machine']['logical_cpus']} CPUs, {data['machine']['date']}; 1-minute "
         f"load {min(loads):.0f}-{max(loads):.0f} where the benchmark alone gives about 2, so the ratios are "
         f"indicative). B6 over B1 (the attention's cost): {b6_over_b1}. Training at "
         f"{data['settings']['width']}x{data['settings']['height']}, batch 1, every loss; the profile, the targets "
         f"and what did not help: docs/PERFORMANCE.md.")


def make_run_results() -> str:
    """The README's result table: the judge's scores of the model `make run` trained, of the real photos and of
    the mean-colour baseline; the register gate's decision; where the time went."""
    data = results("make_run")
    scores, registration, training = (data["outputs"][part] for part in ("eval", "register", "train"))
    fd_ratio = scores["fd_judge_generated"] / scores["fd_judge_baseline"]
    rows = [
        ["judge mIoU", f"{scores['judge_miou_real']:.3f}",
         f"**{scores['judge_miou_generated']:.3f}** ({scores['judge_miou_ratio']:.2f} of real)",
         f"{scores['judge_miou_baseline']:.3f}"],
        ["judge pixel accuracy", f"{scores['judge_accuracy_real']:.3f}", f"{scores['judge_accuracy_generated']:.3f}",
         f"{scores['judge_accuracy_baseline']:.3f}"],
        ["judge Fréchet distance to the real photos (not FID)", "(the reference)",
         f"**{scores['fd_judge_generated']:.4f}** ({fd_ratio:.2f} of the baseline's)",
         f"{scores['fd_judge_baseline']:.4f}"],
    ]
    table = markdown_table([f"on the {scores['num_images']:.0f} validation scenes", "real photos",
                            "DAGAN B6 (EMA generator)", "mean-colour baseline"], rows)
    aliases = " and ".join(f"`{alias}`" for alias in registration["aliases"])
    verdict = "passed" if registration["gate_passed"] else "failed"
    gate = (f"The register gate {verdict}: `{registration['model_name']}` version {registration['version']} "
            f"carries {aliases}.")
    stages = ", ".join(f"{stage} {spent:.0f} s" for stage, spent in data["stages_s"].items())
    timing = (f"`dvc repro` took {data['target_s'] / 60:.1f} minutes ({stages}); training ran {training['steps']} "
              f"steps at {training['seconds_per_step']:.2f} s per step ({training['images_per_second']:.1f} images/s, "
              "checkpoints and MLflow included).")
    return f"{table}\n\n{gate} {timing} {measured('make_run')}"


def official_b6_over_b1() -> str:
    entries = results("official")["summary"]["b6_over_b1"]
    rows = [[mode, f"**{entry['ratio']:.3f}**", f"{min(entry['per_round']):.3f}-{max(entry['per_round']):.3f}",
             f"<= {entry['target']:.2f}: {'met' if entry['target_met'] else '**not met**'}"]
            for mode, entry in entries.items()]
    return markdown_table(["mode", "B6 / B1 (medians)", "per round", "target"], rows) + "\n\n" + measured("official")


def official_inference() -> str:
    data = results("official")
    rows = []
    for batch, entries in data["summary"]["inference"].items():
        for mode, entry in entries.items():
            rows.append([batch.removeprefix("batch"), mode, f"{entry['official_images_per_second']:.3g}",
                         f"**{entry['ours_images_per_second']:.3g}**", f"**{1 / entry['ratio']:.2f}x**",
                         f"{min(1 / r for r in entry['per_round']):.2f}-{max(1 / r for r in entry['per_round']):.2f}"])
    return markdown_table(["batch", "our mode", "official images/s", "ours images/s", "ours / official speed",
                           "per round"], rows) + "\n\n" + measured("official")


def official_commits() -> str:
    data = results("official")
    lines = [f"- official {code}: commit `{entry['commit']}`{' (modified)' if entry['modified'] else ''}"
             for code, entry in data["official"].items()]
    ours = data["ours"]
    changes = " plus uncommitted changes to its code" if ours["modified"] else ""
    lines.append(f"- ours: commit `{ours['commit']}`{changes}")
    lines.append(f"- run {data['started']} to {data['finished']}, 1/5/15-minute load average "
                 f"{data['load_average_before']} before and {data['load_average_after']} after")
    return "\n".join(lines)


def profile_table(name: str, limit: str = "15") -> str:
    """The ops of bench.profile that take most of an iteration, with their rate against the measured peaks."""
    data = results(name)
    rows = []
    for op in data["ops"][:int(limit)]:
        rate = f"{op['gflops_per_s']:.0f} GFLOP/s ({op['fraction_of_peak_flops']:.0%})" if op.get("gflops_per_s") \
            else ""
        traffic = f"{op['gb_per_s']:.1f} GB/s ({op['fraction_of_peak_bandwidth']:.0%})" if op.get("gb_per_s") else ""
        rows.append([f"`{op['name']}`", op["calls"], f"{op['self_s']:.3f}", f"{op['share']:.1%}", rate, traffic])
    peaks = data["peaks"]
    total_gflop = sum(op.get("gflops") or 0.0 for op in data["ops"])
    unprofiled = data["unprofiled_iteration_s"]["median"]
    return (markdown_table(["op", "calls", "self s", "share of the iteration", "compute rate (of peak)",
                            "memory traffic (of peak)"], rows)
            + f"\n\nThe convolutions and matrix multiplies of the iteration add up to {total_gflop:.0f} GFLOP. "
              f"Profiled iteration {data['iteration_s']:.2f} s, unprofiled {unprofiled:.2f} s (median). "
              f"Peaks measured in the same process: {peaks['matmul_gflops']:.0f} GFLOP/s for a "
              f"{peaks['matmul_size']}^3 {data['spec']['precision']} matrix multiply, "
              f"{peaks['copy_gb_per_s']:.1f} GB/s for a {peaks['copy_mib']:.0f} MiB copy (read + write). "
            + measured(name))


def dataloader_table(name: str = "dataloader") -> str:
    """bench.dataloader: images/s of the training data pipeline per worker count, against training's consumption."""
    data = results(name)
    rows = [[row["workers"], f"**{row['images_per_second']:.1f}**", f"{row['median_item_ms']:.1f}",
             f"{row['times_fastest_training']:.0f}", row["load"]] for row in data["rows"]]
    return markdown_table(["DataLoader workers", "images/s", "median ms/item", "x fastest training", "load 1 min"],
                          rows) + "\n\n" + measured(name)


# Groups of bench.profile's rows, first match wins: (name, what a row's op name starts with or equals).
PROFILE_GROUPS = (
    ("convolutions (oneDNN, layout reorders included)", ("conv ",)),
    ("matrix multiplies (the GEMM path of the small maps)", ("mm ", "addmm ", "bmm ")),
    ("Adam (fused)", ("_fused_adam_",)),
    ("spectral norm (power iteration, sigma, gradient term)", ("addmv_", "mv", "addr", "addr_", "dot")),
    ("batch norm, instance norm", ("native_batch_norm", "native_batch_norm_backward", "native_group_norm",
                                   "native_group_norm_backward")),
    ("copies, casts, layout changes", ("copy_", "clone", "_to_copy", "contiguous", "im2col", "col2im")),
)


def profile_group(name: str) -> str:
    for group, prefixes in PROFILE_GROUPS:
        if any(name == prefix or (prefix.endswith(" ") and name.startswith(prefix)) for prefix in prefixes):
            return group
    return "elementwise and the rest (activations, SPADE modulation, losses, pooling, attention)"


def profile_groups_table(*names: str) -> str:
    """Share of the iteration per group of ops, one column per profile."""
    shares: dict[str, dict[str, float]] = {}
    for name in names:
        for op in results(name)["ops"]:
            column = shares.setdefault(profile_group(op["name"]), {})
            column[name] = column.get(name, 0.0) + op["share"]
    columns = [f"{results(name)['spec']['mode']} share" for name in names]
    rows = [[group, *(f"{values.get(name, 0.0):.0%}" for name in names)]
            for group, values in sorted(shares.items(), key=lambda item: -item[1].get(names[0], 0.0))]
    return markdown_table(["ops", *columns], rows) + "\n\n" + measured(*names)


TABLES: dict[str, Callable[..., str]] = {
    "make-run-results": make_run_results,
    "readme-performance": readme_performance,
    "profile-groups": profile_groups_table,
    "dataloader": dataloader_table,
    "train-step": train_step_table,
    "inference": inference_table,
    "official-training": official_training,
    "official-b6-over-b1": official_b6_over_b1,
    "official-inference": official_inference,
    "official-commits": official_commits,
    "profile": profile_table,
}


def render(kind: str, arguments: str) -> str:
    """What belongs between the markers of one generated part."""
    name, *rest = arguments.split()
    if kind == "value":
        if len(rest) != 2:
            raise ReportError(f"bench:value {arguments}: expected FILE PATH FORMAT")
        return value(name, *rest)
    if name not in TABLES:
        raise ReportError(f"bench:table {name}: unknown; tables: {', '.join(TABLES)}")
    return "\n" + TABLES[name](*rest) + "\n"


def documents(root: Path = ROOT) -> Iterator[Path]:
    yield root / "README.md"
    yield from sorted((root / "docs").glob("*.md"))


def regenerate(text: str, where: str, errors: list[str] | None = None) -> str:
    """``text`` with every generated part rendered afresh. A part that cannot be rendered raises a ReportError,
    or, given ``errors``, is left as it is and its error appended there."""
    def replace(match: re.Match) -> str:
        try:
            body = render(match["kind"], match["args"])
        except ReportError as error:
            if errors is None:
                raise ReportError(f"{where}: {error}") from error
            errors.append(f"{where}: {error}")
            return match[0]
        return f"<!-- bench:{match['kind']} {match['args']} -->{body}<!-- /bench -->"

    return MARKER.sub(replace, text)


def stale_part(path: Path) -> str:
    """The diff between a document's generated parts and their JSON ("" when they agree)."""
    text = path.read_text()
    fresh = regenerate(text, path.name)
    return "".join(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), str(path),
                                        f"{path} (from bench/results)"))


def stale(root: Path | None = None) -> dict[Path, str]:
    """Every document of ``root`` (default the repository) whose generated parts differ from their JSON -> a diff."""
    return {path: diff for path in documents(root or ROOT) if (diff := stale_part(path))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a part is out of date")
    parser.add_argument("--commands", action="store_true", help="print the command that wrote each results file")
    args = parser.parse_args(argv)
    if args.commands:
        for path in sorted(RESULTS_DIR.glob("*.json")):
            print(json.loads(path.read_text()).get("command", f"# {path.name}: its command was not recorded"))
        return 0
    errors: list[str] = []
    differences = {}
    for path in documents():  # a part that cannot be rendered is named at the end; the rest is still done
        text = path.read_text()
        if (fresh := regenerate(text, str(path.relative_to(ROOT)), errors)) != text:
            differences[path] = fresh
    for path, fresh in differences.items():
        if args.check:
            text = path.read_text()
            print("".join(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), str(path),
                                               f"{path} (from bench/results)")))
        else:
            from dagan.atomic import atomic_write_text

            atomic_write_text(path, fresh)
            print(f"regenerated {path.relative_to(ROOT)}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        return 2
    if args.check and differences:
        print(f"out of date: {', '.join(str(p.relative_to(ROOT)) for p in differences)}; run python -m bench.report",
              file=sys.stderr)
        return 1
    if not differences:
        print("every generated part agrees with bench/results")
    return 0


if __name__ == "__main__":
    sys.exit(main())

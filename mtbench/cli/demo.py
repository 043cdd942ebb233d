"""`mtbench demo`: the main job end to end on the embedded sample traces, on the CPU, in 3-6 minutes on 2 cores.

1. the model: parameters, KV bytes per user and FLOPs of a miss vs a hit (MTGR-large);
2. the MovieLens-derived sample trace: users, reuse, working set;
3. `compare-policies` on the synthetic sample (fast simulator, every policy and OPT, three GPU capacities);
4. `replay` of the synthetic sample through the real two-tier cache with real forward passes of
   MTGR-mini (the paper's token layout at CPU size), the no-cache / GPU-only / sync baselines, and a
   verify of cached vs recomputed scores.
Both runs leave a report directory (records, summary.json, summary.md, plots) under reports/runs/demo/,
replacing an earlier demo's.
"""

from pathlib import Path

import typer
from rich.console import Console

SAMPLES = Path(__file__).resolve().parents[2] / "traces"


def demo(ctx: typer.Context,
         out: Path = typer.Option(Path("reports/runs/demo"), "--out", "-o", help="Where the two report directories go.")) -> None:
    """Run the main job on the embedded sample traces (CPU, 3-6 minutes on 2 cores).

    Replaces the reports of an earlier demo in --out.

    Examples:

      mtbench demo  # takes minutes
    """
    from mtbench.report import validate_out_dir

    app = ctx.find_root().command  # the whole `mtbench` command (no import of mtbench.cli: no circle)
    for report in ("policies", "replay"):
        validate_out_dir(out / report, force=True)
    console = Console()
    movielens, synthetic = SAMPLES / "movielens-small.parquet", SAMPLES / "synth-small.parquet"
    steps = [
        ("model", ["model", "info", "--model", "large"]),
        ("trace", ["trace", "stats", str(movielens), "--model", "large"]),
        ("policies", ["compare-policies", str(synthetic), "--policies", "lru,arc,s3fifo,sieve,gdsf,mtserve,opt",
                      "--gpu-cache", "256MiB,1GiB,4GiB", "--host-cache", "8GiB", "--model", "large",
                      "-o", str(out / "policies"), "--force"]),
        ("replay", ["replay", str(synthetic), "--model", "mini", "--device", "cpu", "--dtype", "fp32",
                    "--gpu-cache", "8MiB", "--host-cache", "128MiB", "--batch-size", "16", "--max-requests", "320",
                    "--warmup", "48", "--baseline", "--verify", "8", "-o", str(out / "replay"), "--force"]),
    ]
    for name, args in steps:
        console.rule(f"[bold]demo: {name}[/]  mtbench {' '.join(args)}")
        app.main(args, standalone_mode=False)
    console.print(f"\nReports: {out / 'policies'} and {out / 'replay'} (plots in each plots/ folder). "
                  "Next: `mtbench plot DIR`, `mtbench report DIR`, or replay on a GPU with --device cuda --dtype bf16.")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("demo")(demo)

"""Bad input across every CLI entry point: a non-zero exit, one message naming the problem and the
offending value or line, and never a traceback (issue 12).

Each row is ``(command line, text the message must contain)``; ``{name}`` placeholders are files
the ``files`` fixture writes (a directory, malformed traces, scenarios, plans, ...).  Rows run
in-process through ``servesim.cli.main`` (argparse errors raise ``SystemExit(2)``); a few run as
subprocesses to check the installed entry point end to end.  No row may start real work: every
input is refused before a simulation, a server or a measurement begins.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from servesim.cli import main

SCENARIO = """name: {name}
deployment: {{model: {model}, gpu: h100-sxm, tp: {tp}}}
workload: {{kind: burst, input_len: 64, output_len: 8}}
sweep: {{axis: burst, points: [1, 2]}}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "adir").mkdir()
    (d / "afile").write_text("x")

    def w(name: str, text: str | bytes) -> None:
        (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())

    plain = "arrival_s,input_tokens,output_tokens\n"
    w("extra.csv", plain + "0.0,100,10,7\n1.0,100,10,7\n")
    w("short.csv", plain + "0.0,100,10\n1.0,100\n")
    w("unknown.csv", "a,b,c\n1,2,3\n")
    w("negative.csv", plain + "-1.0,100,10\n")
    w("unsorted.csv", plain + "2.0,100,10\n1.0,100,10\n")
    w("notutf8.csv", plain.encode() + b"0.0,\xff\xfe,10\n")
    w("empty.csv", "")
    w("header_only.csv", plain)
    w("zero_input.csv", plain + "0.0,0,10\n")
    w("fraction.csv", plain + "0.0,10.5,10\n")
    w("text_cell.csv", plain + "0.0,many,10\n")
    w("dup_header.csv", "arrival_s,input_tokens,output_tokens,input_tokens\n0,1,1,1\n")
    w("azure_bad_time.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,10\n")
    w("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n{oops\n')
    w("list.jsonl", "[1, 2, 3]\n")
    w("inf.jsonl", '{"timestamp": 0, "input_length": 1e999, "output_length": 2}\n')
    w("neg_out.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": -2}\n')
    w("back.jsonl", '{"timestamp": 5, "input_length": 5, "output_length": 2}\n'
                    '{"timestamp": 1, "input_length": 5, "output_length": 2}\n')
    w("huge_time.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 2}\n'
                         '{"timestamp": 1e300, "input_length": 5, "output_length": 2}\n')
    w("bench_null.json", json.dumps({"input_lens": None, "output_lens": None}))
    w("bench_mismatch.json", json.dumps({"input_lens": [1, 2], "output_lens": [1]}))
    w("bench_list.json", "[1, 2]")
    w("bench_bad.json", "{not json")
    w("bench_nulls_inside.json", json.dumps({"input_lens": [10, None], "output_lens": [5, 5]}))
    w("bad.json", "{nope")
    w("list.json", "[1]")
    w("profile_shape.json", json.dumps({"name": "x", "step": 5}))
    w("bad_heads.json", json.dumps({"num_hidden_layers": 2, "hidden_size": 96, "num_attention_heads": 6, "head_dim": 16,
                                    "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 100,
                                    "max_position_embeddings": 512}))
    w("bad.yaml", "name: [unclosed\n")
    w("dotdot.yaml", SCENARIO.format(name="../../escape", model="llama-3.1-8b", tp=1))
    w("dotname.yaml", SCENARIO.format(name="..", model="llama-3.1-8b", tp=1))
    w("tp3.yaml", SCENARIO.format(name="tp3", model="llama-3.1-8b", tp=3))
    w("tp16.yaml", SCENARIO.format(name="tp16", model="llama-3.1-8b", tp=16))
    w("badmodel.yaml", SCENARIO.format(name="m", model="no-such-model", tp=1))
    w("unknown_key.yaml", SCENARIO.format(name="k", model="llama-3.1-8b", tp=1) + "colour: red\n")
    w("points0.yaml", SCENARIO.format(name="p", model="llama-3.1-8b", tp=1).replace("[1, 2]", "[0, 2]"))
    w("tracedir.yaml", "name: t\ndeployment: {model: llama-3.1-8b}\nworkload: {kind: trace, trace: adir}\n"
                       "sweep: {axis: rate, points: [1]}\n")
    w("tracemissing.yaml", "name: t\ndeployment: {model: llama-3.1-8b}\nworkload: {kind: trace, trace: none.csv}\n"
                           "sweep: {axis: rate, points: [1]}\n")
    w("ok.yaml", SCENARIO.format(name="ok", model="llama-3.1-8b", tp=1))
    w("plan_family.yaml", "name: p\nfamilies: {warp: {}}\n")
    w("plan_list.yaml", "- 1\n- 2\n")
    (d / "run_done").mkdir()
    (d / "run_done" / "run.json").write_text("{}")
    (d / "run_badjson").mkdir()
    (d / "run_badjson" / "run.json").write_text("{broken")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    used = socket.socket()
    used.bind(("127.0.0.1", 0))
    used.listen()
    yield {"d": d, "free": free, "used": used.getsockname()[1]}
    used.close()


S = "simulate --burst 4"  # a valid base for engine-knob rows
CASES = [
    # ---- simulate: workload counts and rates
    ("simulate --burst 0", "--burst: must be an integer in [1, 20000000]"),
    ("simulate --burst -5", "got '-5'"),
    ("simulate --burst abc", "expected an integer, got 'abc'"),
    ("simulate --burst 100000000000", "got '100000000000'"),
    ("simulate --rate 0", "--rate: must be a number > 0"),
    ("simulate --rate -1", "got '-1'"),
    ("simulate --rate nan", "got 'nan'"),
    ("simulate --concurrency 0", "--concurrency"),
    ("simulate --rate 1 --num-requests 0", "--num-requests"),
    ("simulate --rate 1 --num-requests -1", "got '-1'"),
    ("simulate --rate 1 --num-requests 1e9", "expected an integer, got '1e9'"),
    ("simulate --rate 1 --burstiness 0", "--burstiness"),
    ("simulate --concurrency 2 --think-time -1", "--think-time"),
    ("simulate --rate 1 --input-len 0", "--input-len"),
    ("simulate --rate 1 --output-len 0", "--output-len"),
    ("simulate --rate 1 --range-ratio 1.5", "--range-ratio"),
    ("simulate --rate 1 --seed -1", "--seed"),
    ("simulate --rate 1 --sample-interval 0", "--sample-interval"),
    ("simulate --rate 1 --sample-interval 1e-9", "got '1e-9'"),
    ("simulate --rate 1 --sample-interval inf", "got 'inf'"),
    ("simulate --trace {d}/extra.csv --time-scale 0", "--time-scale"),
    ("simulate --bench-json {d}/bench_mismatch.json --bench-rate 0", "--bench-rate"),
    ("simulate --burst 5 --input-len 200000 --output-len 10", "no request completed: all 5 were rejected"),
    # the cluster path shares simulate's checks before and after the work
    ("simulate --replicas 2 --burst 5 --input-len 200000 --output-len 10", "no request completed: all 5 were rejected"),
    ("simulate --replicas 2 --burst 4 --out /proc/servesim-out", "cannot write in /proc"),
    # ---- simulate: engine knobs
    (S + " --max-num-seqs 0", "--max-num-seqs: must be an integer >= 1, got '0'"),
    (S + " --max-num-seqs -3", "got '-3'"),
    (S + " --max-num-batched-tokens 0", "--max-num-batched-tokens"),
    (S + " --max-model-len 0", "--max-model-len"),
    (S + " --max-model-len 1", "got '1'"),
    (S + " --max-model-len 10000000", "max_model_len 10000000 exceeds"),
    (S + " --gpu-memory-utilization 0", "--gpu-memory-utilization"),
    (S + " --gpu-memory-utilization 1.5", "got '1.5'"),
    (S + " --gpu-memory-utilization nan", "got 'nan'"),
    (S + " --swap-space -1", "--swap-space: must be a number >= 0"),
    (S + " --num-gpu-blocks 0", "--num-gpu-blocks"),
    (S + " --block-size 7", "invalid choice: 7"),
    (S + " --tp 0", "--tp/--tensor-parallel-size: must be an integer >= 1"),
    (S + " --tp 3", "attention heads (32) must be divisible by tensor parallel size (3)"),
    (S + " --tp 16", "tensor_parallel_size 16 exceeds the 8 GPUs of one node"),
    (S + " --model mistral-7b --tp 6", "divisible by tensor parallel size (6)"),
    (S + " --model no-such-model", "unknown model 'no-such-model'"),
    (S + " --model {d}/bad.json", "bad.json"),
    (S + " --model {d}/bad_heads.json", "num_attention_heads (6) is not a multiple of num_key_value_heads (4)"),
    (S + " --gpu no-such-gpu", "no-such-gpu"),
    (S + " --engine v2", "invalid choice: 'v2'"),
    (S + " --dtype int3", "unknown dtype 'int3'"),
    (S + " --kv-cache-dtype fp4", "invalid choice: 'fp4'"),
    (S + " --max-num-batched-tokens 4 --max-num-seqs 8", "max_num_batched_tokens (4) must be >= max_num_seqs (8)"),
    (S + " --no-enable-chunked-prefill", "vllm-v1 always uses chunked prefill"),
    (S + " --preemption-mode swap", "vllm-v1 preempts by recompute only"),
    (S + " --model gpt2-xl --tp 8 --engine vllm-v0", "tensor parallel size (8)"),
    # ---- simulate: files
    (S + " --profile {d}/adir", "is a directory; expected a file"),
    (S + " --profile {d}/missing.json", "file '{d}/missing.json' not found"),
    (S + " --profile {d}/bad.json", "not a readable JSON file"),
    (S + " --profile {d}/list.json", "expected a JSON object, got list"),
    (S + " --profile {d}/profile_shape.json", "profile_shape.json"),
    ("simulate --trace {d}/adir", "is a directory"),
    ("simulate --trace {d}/missing.csv", "not found"),
    ("simulate --trace {d}/extra.csv", "extra.csv: line 2: 4 fields, expected 3"),
    ("simulate --trace {d}/short.csv", "short.csv: line 3: 2 fields, expected 3"),
    ("simulate --trace {d}/unknown.csv", "unknown trace format"),
    ("simulate --trace {d}/negative.csv", "line 2: arrival_s='-1.0'; expected seconds >= 0"),
    ("simulate --trace {d}/unsorted.csv", "line 3: arrival_s goes back in time"),
    ("simulate --trace {d}/notutf8.csv", "not UTF-8"),
    ("simulate --trace {d}/empty.csv", "empty"),
    ("simulate --trace {d}/header_only.csv", "the workload has no requests"),
    ("simulate --trace {d}/zero_input.csv", "line 2: input_tokens='0'; expected a token count >= 1"),
    ("simulate --trace {d}/fraction.csv", "line 2: input_tokens='10.5'; expected a whole number"),
    ("simulate --trace {d}/text_cell.csv", "line 2: input_tokens='many'"),
    ("simulate --trace {d}/dup_header.csv", "header repeats column(s) ['input_tokens']"),
    ("simulate --trace {d}/azure_bad_time.csv", "line 2: TIMESTAMP='yesterday'"),
    ("simulate --trace {d}/bad.jsonl", "bad.jsonl: line 2: invalid JSON"),
    ("simulate --trace {d}/list.jsonl", "line 1: got list"),
    ("simulate --trace {d}/inf.jsonl", "line 1: input_length=inf"),
    ("simulate --trace {d}/neg_out.jsonl", "line 1: output_length=-2"),
    ("simulate --trace {d}/back.jsonl", "line 2: timestamp 1 goes back in time"),
    ("simulate --trace {d}/huge_time.jsonl", "arrival times beyond"),
    ("simulate --bench-json {d}/bench_null.json", "missing list 'input_lens'"),
    ("simulate --bench-json {d}/bench_mismatch.json", "input_lens has 2 entries, output_lens 1"),
    ("simulate --bench-json {d}/bench_list.json", "expected a JSON object"),
    ("simulate --bench-json {d}/bench_bad.json", "line 1: invalid JSON"),
    ("simulate --bench-json {d}/bench_nulls_inside.json", "input_lens[1]=None"),
    ("simulate --bench-json {d}/adir", "is a directory"),
    ("simulate --burst 4 --out {d}/afile", "--out '{d}/afile' exists and is not a folder"),
    ("simulate --burst 4 --out {d}/afile/sub", "is not a folder"),
    ("simulate --burst 4 --out /proc/servesim-out", "cannot write in /proc"),
    # ---- serve (every row fails before a port is bound)
    ("serve --port 99999", "--port: must be an integer in [0, 65535]"),
    ("serve --port -1", "got '-1'"),
    ("serve --speed 0", "--speed: must be a number > 0"),
    ("serve --speed inf", "got 'inf'"),
    ("serve --tp 3", "divisible by tensor parallel size (3)"),
    ("serve --tp 16", "exceeds the 8 GPUs"),
    ("serve --max-num-seqs 0", "--max-num-seqs"),
    ("serve --swap-space -2", "--swap-space"),
    ("serve --model no-such-model", "unknown model"),
    ("serve --profile {d}/adir", "is a directory"),
    ("serve --output-len-dist bogus:1", "bad length distribution 'bogus:1'"),
    ("serve --output-len-dist normal:-5:1", "parameters must be finite and >= 0"),
    ("serve --stream-write-timeout 0", "--stream-write-timeout"),
    ("serve --seed -4", "--seed"),
    ("serve --port {used}", "cannot serve on 127.0.0.1:{used}"),
    # ---- measure (nothing answers on {free}; no row sends a request)
    ("measure --url http://127.0.0.1:8000", "the following arguments are required: --out"),
    ("measure --out {d}/m1 --url ftp://x", "--url 'ftp://x' must be http://HOST:PORT"),
    ("measure --out {d}/m2 --url http://", "must be http://HOST:PORT"),
    ("measure --out {d}/m3 --plan nosuch", "nosuch"),
    ("measure --out {d}/m4 --plan {d}/adir", "adir"),
    ("measure --out {d}/m5 --plan {d}/bad.yaml", "bad.yaml"),
    ("measure --out {d}/m6 --plan {d}/plan_family.yaml", "warp"),
    ("measure --out {d}/m7 --plan {d}/plan_list.yaml", "plan_list.yaml"),
    ("measure --out {d}/m8 --scrape-interval 0.001", "--scrape-interval"),
    ("measure --out {d}/m9 --url http://127.0.0.1:{free}", "no server answers http://127.0.0.1:{free}/health"),
    ("measure --out {d}/nothing --resume --url http://127.0.0.1:{free}", "not a measurement run directory"),
    ("measure --out {d}/run_done --url http://127.0.0.1:{free}", "already holds a run"),
    ("measure --out {d}/run_badjson --resume --url http://127.0.0.1:{free}", "not valid JSON"),
    ("measure --out {d}/m10 --backend torch-kernels", "needs --model"),
    ("measure --out {d}/m11 --launch-timeout 0", "--launch-timeout"),
    ("measure --out {d}/m12 --settle -1", "--settle"),
    ("measure --out {d}/m13 --max-model-len 0", "--max-model-len"),
    ("measure --out {d}/m14 --url http://10.1.2.3:8000 --launch 'vllm serve x'", "must be a loopback address"),
    ("measure --out {d}/afile --url http://127.0.0.1:{free}", "exists and is not a folder"),
    ("measure --out {d}/m15 --backend gpu", "invalid choice: 'gpu'"),
    # ---- calibrate / validate
    ("calibrate {d}/missing -o {d}/p.json", "missing"),
    ("calibrate {d}/adir -o {d}/p.json", "adir"),
    ("calibrate {d}/adir -o {d}/p.json --engine v9", "invalid choice: 'v9'"),
    ("calibrate {d}/adir -o {d}/p.json --workers 0", "--workers"),
    ("calibrate {d}/adir -o {d}/p.json --max-nfev 0", "--max-nfev"),
    ("calibrate {d}/adir -o {d}/p.json --start garbage", "--start 'garbage'"),
    ("calibrate {d}/adir -o /proc/servesim/p.json", "cannot write in /proc"),
    ("calibrate {d}/adir", "the following arguments are required: -o/--output"),
    ("validate {d}/missing.json", "missing.json"),
    ("validate {d}/adir", "adir"),
    ("validate {d}/bench_null.json --model llama-3.1-8b", "input_lens"),
    ("validate {d}/bench_bad.json --model llama-3.1-8b", "bench_bad.json"),
    ("validate {d}/bench_list.json --model llama-3.1-8b", "bench_list.json"),
    ("validate {d}/bench_mismatch.json --tp 0", "--tp"),
    ("validate {d}/bench_mismatch.json --max-num-seqs 0", "--max-num-seqs"),
    ("validate {d}/bench_mismatch.json --request-rate 0", "--request-rate"),
    ("validate {d}/bench_mismatch.json --gpu-memory-utilization 2", "--gpu-memory-utilization"),
    # ---- sweep / regions / plan
    ("sweep no-such-scenario", "no-such-scenario"),
    ("sweep {d}/adir", "is a directory"),
    ("sweep {d}/bad.yaml", "not valid YAML"),
    ("sweep {d}/dotdot.yaml", "name must be 1-100 letters, digits"),
    ("sweep {d}/dotname.yaml", "got '..'"),
    ("sweep {d}/tp3.yaml", "divisible by tensor parallel size (3)"),
    ("sweep {d}/tp16.yaml", "exceeds the 8 GPUs"),
    ("sweep {d}/badmodel.yaml", "unknown model 'no-such-model'"),
    ("sweep {d}/unknown_key.yaml", "unknown top-level key 'colour'"),
    ("sweep {d}/points0.yaml", "points must be finite and > 0"),
    ("sweep {d}/tracedir.yaml", "is a directory"),
    ("sweep {d}/tracemissing.yaml", "none.csv"),
    ("sweep {d}/ok.yaml --workers 0", "--workers"),
    ("sweep {d}/ok.yaml --variant nope", "no variant 'nope'"),
    ("sweep {d}/ok.yaml --out {d}/afile", "exists and is not a folder"),
    ("sweep {d}/ok.yaml --executor ray", "invalid choice: 'ray'"),
    ("regions {d}/missing", "missing"),
    ("regions {d}/adir", "adir"),
    ("regions {d}/afile", "afile"),
    ("regions {d}/adir --slo p99_ttft_ms<=abc", "p99_ttft_ms<=abc"),
    ("regions {d}/adir --axis bogus", "invalid choice: 'bogus'"),
    ("regions {d}/adir --scenario {d}/bad.yaml", "bad.yaml"),
    ("plan --demand 0", "--demand"),
    ("plan --demand -1", "--demand"),
    ("plan --demand abc", "--demand"),
    ("plan", "the following arguments are required: --demand"),
    ("plan --demand 1 --gpus no-such-gpu", "no-such-gpu"),
    ("plan --demand 1 --tp a,b", "--tp 'a,b': expected comma-separated integers"),
    ("plan --demand 1 --tp 0", "--tp"),
    ("plan --demand 1 --max-num-seqs x", "--max-num-seqs 'x'"),
    ("plan --demand 1 --max-num-seqs 0", "--max-num-seqs"),
    ("plan --demand 1 --workload bogus", "--workload 'bogus'"),
    ("plan --demand 1 --workload fixed:0:10", "fixed:0:10"),
    ("plan --demand 1 --workload trace:{d}/adir", "is a directory"),
    ("plan --demand 1 --slo bogus", "bogus"),
    ("plan --demand 1 --gpu-price h100-sxm=abc", "--gpu-price 'h100-sxm=abc'"),
    ("plan --demand 1 --duration 0", "--duration"),
    ("plan --demand 1 --top 0", "--top"),
    ("plan --demand 1 --pue 0.5", "--pue"),
    ("plan --demand 1 --model no-such-model", "unknown model"),
    # ---- listings
    ("models extra", "unrecognized arguments: extra"),
    ("gpus --bogus", "unrecognized arguments: --bogus"),
    ("profiles --json", "unrecognized arguments: --json"),
    ("no-such-command", "invalid choice: 'no-such-command'"),
]


def _argv(line: str, files: dict) -> list[str]:
    import shlex
    return shlex.split(line.format(**files))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_table_is_large_and_covers_every_command():
    commands = {line.split()[0] for line, _ in CASES}
    assert len(CASES) >= 100
    assert {"simulate", "serve", "measure", "calibrate", "validate", "sweep", "regions", "plan", "models",
            "gpus", "profiles"} <= commands


@pytest.mark.parametrize("line, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(line, expected, files, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folders (sweeps/<name>) land here
    code, text = run_cli(_argv(line, files), capsys)
    assert code not in (0, None), f"exit {code}: {text}"
    assert "Traceback" not in text, text
    assert expected.format(**files) in text, text
    assert len(text.strip().splitlines()) <= 3, text  # one message, not a dump


@pytest.mark.parametrize("line, expected", [
    ("simulate --trace {d}/extra.csv", "line 2: 4 fields"),
    ("serve --port 99999", "--port"),
    ("sweep {d}/dotdot.yaml", "name must be"),
    ("simulate --burst 4 --tp 16", "exceeds the 8 GPUs"),
])
def test_bad_input_through_the_installed_command(line, expected, files):
    proc = subprocess.run([sys.executable, "-I", "-m", "servesim", *_argv(line, files)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert expected in proc.stderr and proc.stdout == ""

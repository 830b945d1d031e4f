"""One declaration of the intervention arguments (``core_eval.options.CoreArgs``), shared by
lm-eval's ``core_hf``, the VLMEvalKit model, ``core_eval.plan`` / ``load`` and the CLI (issue #17).

Variant options pass through every entry point by name; an argument nobody takes is an error
listing all valid ones before any weights load; one strict validation everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import core_eval
from core_eval.options import CORE_ARGS, CoreArgs, ModelArgsError, args_table, make_plan, parse_core_args

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


#: The README's HalfScale variant (one option, ``factor``): written as the entry-point module of
#: :func:`_entry_point_package`, and registered here under a test name.
HALF_SCALE = textwrap.dedent('''
    import torch
    from core_eval.masks import Variant, register_variant

    @register_variant
    class HalfScale(Variant):
        name = "half"
        description = "scale the head's output by `factor`"
        options = {"factor": (float, 0.5, "multiplier")}

        def apply(self, patcher, heads):
            for layer, idx in heads.items():
                def fn(x, idx=idx):
                    scale = torch.ones(x.shape[2], 1, dtype=x.dtype, device=x.device)
                    scale[idx] = self.config["factor"]
                    return x * scale
                patcher.o_proj_input(layer, fn)
''')
_ns: dict = {}  # the class registers itself on exec
exec(HALF_SCALE.replace("@register_variant\n", "@register_variant(replace=True)\n")
     .replace('name = "half"', 'name = "test_opt_scale"'), _ns)




def test_the_tables_are_the_dataclass_fields():
    names = [f.name for f in dataclasses.fields(CoreArgs) if not f.metadata.get("internal")]
    assert list(args_table()) == names == list(CORE_ARGS)
    assert all(f.metadata["help"] for f in dataclasses.fields(CoreArgs) if not f.metadata.get("internal"))
    from core_eval.integrations.vlmeval import _common

    assert _common.core_args_table() == args_table()
    # window / sink / kv_policy are the sparse variants' options, declared there, not here
    assert "window" not in names and "sink" not in names


def test_core_hf_passes_variant_options_by_name(weightless):
    from core_eval.integrations.lm_eval import split_args

    core, rest = split_args({"pretrained": str(weightless), "heads": "0:0", "ablation": "test_opt_scale",
                             "factor": "0.25", "batch_size": "2"})
    assert core["factor"] == 0.25 and "factor" not in rest and rest["batch_size"] == "2"
    p = make_plan(str(weightless), core)
    assert p.variant.config == {"factor": 0.25}
    core, _ = split_args({"pretrained": str(weightless), "heads": "0:0", "sparse": "streaming", "block": "8",
                          "window": "16"})
    assert make_plan(str(weightless), core).variant.config["block"] == 8  # not settable before #17
    core, _ = split_args({"pretrained": str(weightless), "heads": "0:0", "sparse": "streaming", "backend": "flex",
                          "flex_compile": "false"})
    config = make_plan(str(weightless), core).variant.config
    assert config["backend"] == "flex" and config["flex_compile"] is False
    with pytest.raises(core_eval.masks.VariantError, match="backend='fast': use one of auto, flex, blocks"):
        make_plan(str(weightless), split_args({"pretrained": str(weightless), "heads": "0:0", "sparse": "streaming",
                                               "backend": "fast"})[0])


def test_vlmeval_passes_variant_options_by_name(weightless):
    from core_eval.integrations.vlmeval import _common, model_name

    core, load = _common.split_model_args(f"pretrained={weightless},heads=0:0,ablation=test_opt_scale,factor=0.25")
    assert core["factor"] == 0.25 and load == {"pretrained": str(weightless)}
    a = model_name("m", pretrained=str(weightless), heads="0:0", ablation="test_opt_scale", factor="0.25")
    b = model_name("m", pretrained=str(weightless), heads="0:0", ablation="test_opt_scale", factor="0.75")
    assert a != b  # the option is part of the intervention's identity (VLMEvalKit reuses by name)


def test_python_api_takes_variant_options_by_name(weightless):
    p = core_eval.plan(weightless, heads=[(0, 0)], ablation="test_opt_scale", factor=0.25)
    assert p.variant.config == {"factor": 0.25}
    with pytest.raises(ModelArgsError, match="both by name and in variant_options"):
        core_eval.plan(weightless, heads=[(0, 0)], ablation="test_opt_scale", factor=0.25,
                       variant_options={"factor": 0.5})
    with pytest.raises(ModelArgsError, match=r"variant 'zero' got unknown option\(s\) \['factor'\]"):
        core_eval.plan(weightless, heads=[(0, 0)], factor=0.25)


@pytest.mark.parametrize("where", ["core_hf", "vlmeval", "plan"])
def test_one_strict_validation_for_every_entry_point(weightless, where):
    """k=2.5 from a VLMEvalKit --config JSON (a float) was truncated to 2 on main; now refused everywhere."""
    from core_eval.integrations.lm_eval import split_args
    from core_eval.integrations.vlmeval import _common

    calls = {
        "core_hf": lambda: split_args({"pretrained": str(weightless), "heads": "top", "k": 2.5}),
        "vlmeval": lambda: _common.split_model_args({"pretrained": str(weightless), "heads": "top", "k": 2.5}),
        "plan": lambda: core_eval.plan(weightless, heads="top", k=2.5),
    }
    with pytest.raises(ModelArgsError, match=r"k=2\.5 is not a valid int"):
        calls[where]()


def test_option_of_another_variant_is_named_with_its_variant():
    from core_eval.integrations.lm_eval import split_args

    with pytest.raises(ModelArgsError) as e:
        split_args({"pretrained": "x", "heads": "0:0", "window": "16"})
    msg = str(e.value)
    assert "unknown model_args ['window']" in msg and "window is an option of streaming, text_only" in msg
    assert "sparse=" in msg and "batch_size" in msg and "head_spec (" in msg


def test_parse_core_args_keeps_its_meaning():
    got = parse_core_args({"heads": "top", "frac": "0.1", "sparse": "text_only", "window": "32", "batch_size": 4})
    assert got == {"heads": "top", "frac": 0.1, "sparse": "text_only", "window": 32}


def _entry_point_package(root: Path) -> Path:
    """The README's HalfScale, installed the README's way: an entry point in group core_eval.variants."""
    (root / "my_pkg").mkdir(parents=True)
    (root / "my_pkg" / "__init__.py").write_text("")
    (root / "my_pkg" / "variants.py").write_text(HALF_SCALE)
    info = root / "my_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[core_eval.variants]\nhalf = my_pkg.variants:HalfScale\n")
    return root


def test_lm_eval_registered_variant_by_name_with_its_option(tmp_path, tiny_dir):
    """README: `--model_args ablation=half` (entry point) with `factor=0.25`: failed with
    `unknown model_args ['factor']` on main."""
    import glob
    import json

    pkg = _entry_point_package(tmp_path / "site")
    d = tiny_dir("llava")
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(pkg)]))}
    proc = subprocess.run([str(BIN / "lm_eval"), "--model", "core_hf", "--model_args",
                           f"pretrained={d},heads=0:0;1:1,ablation=half,factor=0.25", "--tasks", "core_grid_needle",
                           "--include_path", str(REPO / "task_configs"), "--limit", "1", "--batch_size", "1",
                           "--gen_kwargs", "max_gen_toks=2", "--output_path", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(out / "*" / "results_*.json"))
    core = json.loads(Path(path).read_text())["config"]["core_eval"]
    assert core["variant"] == {"name": "half", "kind": "ablation", "options": {"factor": 0.25}}
    # the applied heads, once, in one line at start
    lines = [line for line in proc.stderr.splitlines() if line.startswith("core_eval: ")]
    assert lines == ["core_eval: half ablation of 2 heads L0:[0] L1:[1] factor=0.25 (selection rule=explicit, n=2)"]

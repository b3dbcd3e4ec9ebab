"""What a clip build returns, what the program keeps of it, saving every clip class, callback roles."""
import ast
import json
import pathlib

import numpy as np
import pytest

import fluidlite as fl
from fluidlite import clip as C
from fluidlite import io_objects, layers

EXAMPLES = {  # every savable class, with arguments that differ from the defaults
    "ErrorClipByValue": lambda: C.ErrorClipByValue(max=0.7, min=-0.2),
    "GradientClipByValue": lambda: C.GradientClipByValue(0.3, min=-0.1),
    "GradientClipByNorm": lambda: C.GradientClipByNorm(2.5, norm_type=float("inf")),
    "GradientClipByGlobalNorm": lambda: C.GradientClipByGlobalNorm(1.5, group_name="g", skip_nonfinite=True),
    "GradientClipAdaptive": lambda: C.GradientClipAdaptive(clipping=0.05, eps=1e-2),
    "GradientClipAutoClip": lambda: C.GradientClipAutoClip(percentile=25, history_size=7, group_name="ac"),
    "GradientClipZScore": lambda: C.GradientClipZScore(alpha=0.9, z_thresh=3.0, warmup_steps=4, group_name="z",
                                                       skip_spikes=True),
}


def net(grad_clip=None, error_clip=None, seed=3):
    main, startup = fl.Program(), fl.Program()
    startup.random_seed = seed
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3], dtype="float64")
        h = layers.fc(x, size=4, act="tanh")
        h.error_clip = error_clip
        loss = layers.mean(layers.fc(h, size=1))
        if grad_clip is not None:
            C.set_gradient_clip(grad_clip)  # kept on the parameters, so saved with them
        _, pg = fl.optimizer.SGD(0.1).minimize(loss, callback=C.error_clip_callback)
    return main, startup, h, pg


def test_every_exported_clip_class_is_savable():
    bases = {C.GradientClipBase, C.BaseErrorClip}
    exported = {n for n in C.__all__ if isinstance(getattr(C, n), type)
                and issubclass(getattr(C, n), tuple(bases)) and getattr(C, n) not in bases}
    assert set(EXAMPLES) <= exported
    assert {f"{getattr(C, n).__module__}.{n}" for n in exported} <= set(io_objects.ALLOWED)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_clip_roundtrips_save_load_with_its_arguments(name, tmp_path):
    obj = EXAMPLES[name]()
    assert vars(obj) == obj._config()  # the object holds its arguments and nothing else
    is_error = isinstance(obj, C.BaseErrorClip)
    main, _, h, _ = net(None if is_error else obj, obj if is_error else None)
    path = tmp_path / "p.json"
    fl.io.save_program(main, path)
    saved = json.loads(path.read_text())
    assert f"fluidlite.clip.{name}" in path.read_text() and "repr" not in path.read_text()
    loaded = fl.io.load_program(path)
    got = (loaded.global_block().var(h.name).error_clip if is_error
           else loaded.global_block().var("fc_0.w_0").gradient_clip_attr)
    assert type(got) is type(obj) and got._config() == obj._config() and got is not obj
    assert str(loaded) == str(main)
    if hasattr(obj, "group_name"):  # what the build made is kept by the loaded program
        assert C.global_norm_var(obj.group_name, loaded).name == C.global_norm_var(obj.group_name, main).name
        assert saved["clip_records"] == main._clip_records


def test_loader_rebuilds_only_listed_clip_classes_through_their_constructors(tmp_path):
    main, _, _, _ = net(C.GradientClipByGlobalNorm(1.0))
    path = tmp_path / "p.json"
    fl.io.save_program(main, path)
    text = path.read_text()
    for bad in ('"fluidlite.clip.GroupClip"', '"fluidlite.clip.gradient.GradientClipByGlobalNorm"',
                '"fluidlite.clip.build_gradient_clip"'):
        path.write_text(text.replace('"fluidlite.clip.GradientClipByGlobalNorm"', bad))
        with pytest.raises(ValueError, match="not one of the allowed classes"):
            fl.io.load_program(path)
    path.write_text(text.replace('"clip_norm": 1.0', '"clip_norm": -1.0'))  # the constructor checks it
    with pytest.raises(ValueError, match="clip_norm must be > 0"):
        fl.io.load_program(path)
    path.write_text(text.replace('"clip_records": [', '"clip_records": [{"groups": {}, "outputs": ["nope"], '
                                 '"skip": null, "skipped_steps": null}, '))
    with pytest.raises(ValueError, match="clip_records.*'nope' is not a variable"):
        fl.io.load_program(path)


def test_build_returns_groups_and_skip_flag_and_the_clip_object_keeps_nothing():
    clip = C.GradientClipByGlobalNorm(0.5, skip_nonfinite=True)
    before = dict(vars(clip))
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        block = main.global_block()
        ps = [block.create_parameter([3], "float64", name=n) for n in "ab"]
        pairs = [(p, block.create_var(name=p.name + "@GRAD", shape=[3], dtype="float64", is_data=True)) for p in ps]
        result = C.build_gradient_clip(pairs, clip)
        again = C.build_gradient_clip(pairs, clip)  # a second build in the same program
    assert vars(clip) == before
    assert [g.name for _, g in result.params_grads] == ["a@GRAD@CLIP", "b@GRAD@CLIP"]
    assert result.norms == {"default_group": block.var("default_group@GLOBAL_NORM")}
    assert result.skip.name == C.FOUND_NONFINITE and C.update_gate(result) == C.FOUND_NONFINITE
    assert C.update_gate(result.params_grads) == C.FOUND_NONFINITE
    assert C.update_gate(again.params_grads) == again.skip.name
    assert C.update_gate(pairs) is None  # the unclipped gradients: no build returned them
    assert C.global_norm_var(program=main) is again.norms["default_group"]  # the latest build wins
    assert C.skipped_steps_var(main) is again.skipped_steps
    exe = fl.Executor()
    exe.run(startup)
    ga, gb = np.array([3.0, 0.0, 4.0]), np.array([np.nan, 1.0, 1.0])
    norm, found, count = exe.run(main, feed={"a@GRAD": ga, "b@GRAD": gb},
                                 fetch_list=[result.norms["default_group"], result.skip, result.skipped_steps])
    assert np.isnan(norm[0]) and found.tolist() == [True] and count.tolist() == [1]
    clone = main.clone()
    assert C.global_norm_var(program=clone).name == again.norms["default_group"].name


def test_group_name_shared_by_two_kinds_of_clip_raises():
    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        block = main.global_block()
        clips = [C.GradientClipByGlobalNorm(1.0, group_name="g"), C.GradientClipAutoClip(group_name="g")]
        pairs = []
        for i, c in enumerate(clips):
            p = block.create_parameter([2], "float64", name=f"p{i}", attr=fl.ParamAttr(gradient_clip=c))
            pairs.append((p, block.create_var(name=f"p{i}@GRAD", shape=[2], dtype="float64", is_data=True)))
        with pytest.raises(ValueError, match="group 'g' mixes different clips"):
            C.build_gradient_clip(pairs)


def test_clip_modules_import_each_other_without_a_cycle():
    root = pathlib.Path(C.__file__).parent
    deps = {}
    for path in root.glob("*.py"):
        if path.stem == "__init__":
            continue
        tree = ast.parse(path.read_text())
        deps[path.stem] = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}
    seen, done = set(), set()

    def visit(m):
        assert m not in seen or m in done, f"import cycle through fluidlite.clip.{m}"
        if m in seen:
            return
        seen.add(m)
        for d in deps.get(m, ()):
            visit(d)
        done.add(m)

    for m in deps:
        visit(m)
    optimizer = (root.parent / "optimizer.py").read_text()
    assert "hasattr(clip" not in optimizer and "ImportError" not in optimizer


def test_callback_ops_take_the_role_of_the_op_they_follow_or_the_one_they_set():
    def plain(block, context):
        for g in context.completed:
            block.append_op("scale", {"X": g}, {"Out": g + "@PLAIN"}, {"scale": 2.0})

    def guarded(block, context):
        with block.program.role_guard("grad_clip"):
            for g in context.completed:
                block.append_op("scale", {"X": g}, {"Out": g + "@GUARDED"}, {"scale": 2.0})

    main, startup = fl.Program(), fl.Program()
    with fl.program_guard(main, startup):
        x = layers.data(name="x", shape=[3], dtype="float32")
        loss = layers.mean(layers.fc(layers.fc(x, 4, act="tanh"), 1))
        fl.append_backward(loss, callback=[plain, guarded])
        with fl.role_guard("optimize"):
            extra = layers.scale(loss, 3.0)
        after = layers.scale(loss, 1.0)  # the guard was left
    roles = {op.output_names[0].rsplit("@", 1)[-1]: op.role for op in main.global_block().ops
             if op.output_names[0].endswith(("@PLAIN", "@GUARDED"))}
    assert roles == {"PLAIN": "backward", "GUARDED": "grad_clip"}
    assert extra.op.role == "optimize" and "@PLAIN : f32[4] = scale" in str(main)
    assert after.op.role == "forward"
    with pytest.raises(ValueError, match="unknown op role"):
        with fl.role_guard("sideways"):
            pass

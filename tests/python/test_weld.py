"""Tests of the Python module `import weld` (src/python/weld_module.cpp, docs/python.md).

Run by ctest with Debian's python3, PYTHONPATH=build/python and WELD_BINARY=build/weld. Merged
values are checked against NumPy computations of each method's definition; merge() against the
bytes `weld merge` writes for the same recipe.
"""
import json
import os
import pathlib
import shutil
import struct
import subprocess
import signal
import tempfile
import threading
import time
import unittest
import warnings

import numpy as np

import weld

WELD_BINARY = os.path.abspath(os.environ["WELD_BINARY"]) if "WELD_BINARY" in os.environ else ""


def write_safetensors(path, tensors):
    """A safetensors file of float32 tensors (name -> array), as the format defines it."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_safetensors(path):
    data = pathlib.Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)
    body = data[8 + length :]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        assert info["dtype"] == "F32", info
        out[name] = np.frombuffer(body[begin:end], dtype="<f4").reshape(info["shape"])
    return out


SHAPES = {
    "model.embed_tokens.weight": (16, 8),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.down_proj.weight": (8, 12),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.down_proj.weight": (8, 12),
    "model.norm.weight": (8,),
    "lm_head.weight": (16, 8),
}


def write_model(folder, tensors):
    folder.mkdir(parents=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2,
              "vocab_size": 16, "hidden_size": 8, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(config))
    write_safetensors(folder / "model.safetensors", tensors)


class Family(unittest.TestCase):
    """A base and two fine-tunes of a tiny Llama-shaped model, in float32."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = pathlib.Path(tempfile.mkdtemp(prefix="weld-python-test-"))
        rng = np.random.default_rng(5)
        cls.models = {}
        cls.models["base"] = {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}
        for name in ("a", "b"):
            cls.models[name] = {n: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
                                for n, v in cls.models["base"].items()}
        for name, tensors in cls.models.items():
            write_model(cls.tmp / name, tensors)
        cls.cwd = os.getcwd()
        os.chdir(cls.tmp)  # recipes name the models relative to the family folder

    @classmethod
    def tearDownClass(cls):
        os.chdir(cls.cwd)
        shutil.rmtree(cls.tmp)


TIES_RECIPE = """\
merge_method: ties
base_model: base
models:
  - model: a
    parameters: {weight: 0.7, density: 0.5}
  - model: b
    parameters: {weight: 0.4, density: 0.5}
parameters:
  normalize: true
"""


class MergeTest(Family):
    def cli_merge(self, recipe_text, out):
        self.assertTrue(WELD_BINARY, "WELD_BINARY names the weld binary")
        (self.tmp / "recipe.yml").write_text(recipe_text)
        subprocess.run([WELD_BINARY, "merge", "recipe.yml", out, "--quiet", "--force"], check=True)
        return (self.tmp / out / "model.safetensors").read_bytes()

    def test_recipe_as_string_path_and_dict_gives_the_cli_bytes(self):
        expected = self.cli_merge(TIES_RECIPE, "cli-ties")
        (self.tmp / "ties.yml").write_text(TIES_RECIPE)
        recipe_dict = {
            "merge_method": "ties",
            "base_model": "base",
            "models": [{"model": "a", "parameters": {"weight": 0.7, "density": 0.5}},
                       {"model": "b", "parameters": {"weight": 0.4, "density": np.float64(0.5)}}],
            "parameters": {"normalize": True},
        }
        for out, recipe in (("py-text", TIES_RECIPE), ("py-path", "ties.yml"),
                            ("py-pathlib", self.tmp / "ties.yml"), ("py-dict", recipe_dict)):
            with self.subTest(out=out):
                summary = weld.merge(recipe, out, threads=2, quiet=True)
                self.assertEqual((self.tmp / out / "model.safetensors").read_bytes(), expected)
                self.assertEqual(summary["tensors"], len(SHAPES))
                self.assertEqual(summary["shards"], 1)
                self.assertEqual(summary["bytes_written"], sum(4 * np.prod(s, dtype=int) for s in SHAPES.values()))
                self.assertGreaterEqual(summary["seconds"], 0)
        # The dict was written as YAML that reads back as the same recipe.
        self.assertIn("merge_method: ties", (self.tmp / "py-dict" / "weld_recipe.yml").read_text())

    def test_linear_merge_matches_numpy(self):
        recipe = {"merge_method": "linear", "dtype": "float32",
                  "models": [{"model": "a", "parameters": {"weight": 1.0}},
                             {"model": "b", "parameters": {"weight": 3.0}}]}
        weld.merge(recipe, "py-linear", quiet=True, memory_budget="64MB", out_shard_size=10**9, seed=3)
        merged = read_safetensors(self.tmp / "py-linear" / "model.safetensors")
        self.assertEqual(set(merged), set(SHAPES))
        for name in SHAPES:
            a, b = (self.models[m][name].astype(np.float64) for m in ("a", "b"))
            np.testing.assert_allclose(merged[name], (1.0 * a + 3.0 * b) / 4.0, rtol=1e-6, atol=1e-7)

    def test_merge_tensors_computes_each_tensor_of_merge(self):
        # DARE's random drop is keyed by seed, tensor name and source: the per-tensor kernel with
        # the tensor's name and the recipe's seed gives weld merge's tensor.
        recipe = TIES_RECIPE.replace("merge_method: ties", "merge_method: dare_ties")
        weld.merge(recipe, "py-dare", seed=5, quiet=True)
        merged = read_safetensors(self.tmp / "py-dare" / "model.safetensors")
        for name in SHAPES:
            a, b, base = (self.models[m][name] for m in ("a", "b", "base"))
            alone = weld.merge_tensors("dare_ties", base, [a, b], weight=[0.7, 0.4], density=0.5, normalize=True,
                                       seed=5, tensor_name=name)
            np.testing.assert_array_equal(alone, merged[name])
        other_seed = weld.merge_tensors("dare_ties", base, [a, b], weight=[0.7, 0.4], density=0.5, seed=6,
                                        tensor_name=name)
        self.assertFalse(np.array_equal(other_seed, merged[name]))

    def test_small_shards_and_dry_run(self):
        summary = weld.merge(TIES_RECIPE, "py-shards", out_shard_size="1KB", quiet=True)
        self.assertGreater(summary["shards"], 1)
        self.assertTrue((self.tmp / "py-shards" / "model.safetensors.index.json").exists())
        plan = weld.merge(TIES_RECIPE, "py-dry", dry_run=True, quiet=True)
        self.assertFalse((self.tmp / "py-dry").exists())
        self.assertIn("model.layers.1.mlp.down_proj.weight", plan["plan"])

    def test_refuses_to_overwrite_without_force(self):
        weld.merge(TIES_RECIPE, "py-twice", quiet=True)
        with self.assertRaises(weld.Error) as caught:
            weld.merge(TIES_RECIPE, "py-twice", quiet=True)
        self.assertIn("py-twice", str(caught.exception))
        weld.merge(TIES_RECIPE, "py-twice", quiet=True, force=True)

    def test_warnings_are_python_warnings_unless_quiet(self):
        recipe = TIES_RECIPE.replace("normalize: true", "normalize: true\n  t: 0.5")  # slerp's, ignored
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = weld.merge(recipe, "py-warned")
            self.assertEqual(len(summary["warnings"]), 1)
            self.assertIn("'t' is ignored", summary["warnings"][0])
            self.assertTrue(any("'t' is ignored" in str(w.message) for w in caught))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            weld.merge(recipe, "py-warned", force=True, quiet=True)
            self.assertEqual(caught, [])

    def test_bad_recipe_is_a_weld_error_with_weld_message_and_writes_nothing(self):
        bad = TIES_RECIPE.replace("merge_method: ties", "merge_method: tiez")
        with self.assertRaises(weld.Error) as caught:
            weld.merge(bad, "py-bad", quiet=True)
        self.assertIn("tiez", str(caught.exception))
        self.assertFalse((self.tmp / "py-bad").exists())
        self.assertTrue(issubclass(weld.Error, Exception))
        # The CLI says the same.
        (self.tmp / "bad.yml").write_text(bad)
        cli = subprocess.run([WELD_BINARY, "merge", "bad.yml", "cli-bad"], capture_output=True, text=True)
        self.assertNotEqual(cli.returncode, 0)
        self.assertIn(str(caught.exception), cli.stderr)
        with self.assertRaises(weld.Error) as caught:
            weld.merge("no-such-recipe.yml", "py-bad")
        self.assertIn("no-such-recipe.yml", str(caught.exception))
        with self.assertRaises(weld.Error) as caught:
            weld.merge(TIES_RECIPE.replace("- model: b", "- model: missing"), "py-bad", quiet=True)
        self.assertIn("missing", str(caught.exception))
        self.assertFalse((self.tmp / "py-bad").exists())

    def test_nonfinite_models_are_refused_unless_allowed(self):
        folder = self.tmp / "nan-model"
        if not folder.exists():
            tensors = dict(self.models["b"])
            tensors["model.norm.weight"] = tensors["model.norm.weight"].copy()
            tensors["model.norm.weight"][2] = np.nan
            write_model(folder, tensors)
        recipe = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 1.0}},
                                                       {"model": "nan-model", "parameters": {"weight": 1.0}}]}
        with self.assertRaisesRegex(weld.Error, "model.norm.weight.*element 2 is NaN"):
            weld.merge(recipe, "py-nan", quiet=True)
        self.assertFalse((self.tmp / "py-nan").exists())
        weld.merge(recipe, "py-nan", quiet=True, allow_nonfinite=True)
        merged = read_safetensors(self.tmp / "py-nan" / "model.safetensors")
        self.assertTrue(np.isnan(merged["model.norm.weight"][2]))

    def test_wrong_options_are_type_and_value_errors(self):
        with self.assertRaisesRegex(TypeError, "unexpected keyword argument 'thread'"):
            weld.merge(TIES_RECIPE, "py-opt", thread=2)
        with self.assertRaisesRegex(TypeError, "threads must be an integer"):
            weld.merge(TIES_RECIPE, "py-opt", threads="2")
        with self.assertRaisesRegex(ValueError, "threads"):
            weld.merge(TIES_RECIPE, "py-opt", threads=0)
        with self.assertRaisesRegex(TypeError, "force must be True or False"):
            weld.merge(TIES_RECIPE, "py-opt", force=1)
        with self.assertRaisesRegex(weld.Error, "memory_budget"):
            weld.merge(TIES_RECIPE, "py-opt", memory_budget="lots")
        with self.assertRaisesRegex(TypeError, "recipe must be a path, a YAML string or a dict"):
            weld.merge(42, "py-opt")
        with self.assertRaisesRegex(TypeError, r"recipe\['models'\]\[0\]: a set has no YAML form"):
            weld.merge({"merge_method": "linear", "models": [{"a"}]}, "py-opt")
        self.assertFalse((self.tmp / "py-opt").exists())

    def test_dict_strings_that_yaml_would_read_as_other_types_stay_strings(self):
        for name in ("on", "1.5"):  # a YAML 1.1 boolean, a number
            if not (self.tmp / name).exists():
                shutil.copytree(self.tmp / "a", self.tmp / name)
        recipe = {"merge_method": "linear", "models": [{"model": "on", "parameters": {"weight": 1.0}},
                                                       {"model": "1.5", "parameters": {"weight": 1.0}}]}
        weld.merge(recipe, "py-odd-names", quiet=True)
        merged = read_safetensors(self.tmp / "py-odd-names" / "model.safetensors")
        np.testing.assert_allclose(merged["model.norm.weight"], self.models["a"]["model.norm.weight"], rtol=1e-6)

    def test_ctrl_c_stops_the_merge_and_leaves_nothing(self):
        # A model whose TSV merge takes a while (an SVD per tensor); Ctrl-C once its output is begun.
        layers = 40
        for name, scale in (("slow-base", 0.0), ("slow-a", 0.1), ("slow-b", 0.1)):
            folder = self.tmp / name
            folder.mkdir()
            rng = np.random.default_rng(1)
            base = {f"model.layers.{i}.mlp.down_proj.weight": rng.standard_normal((256, 256)).astype(np.float32)
                    for i in range(layers)}
            noise = np.random.default_rng(len(name))
            write_safetensors(folder / "model.safetensors",
                              {n: v + scale * noise.standard_normal(v.shape).astype(np.float32)
                               for n, v in base.items()})
            (folder / "config.json").write_text(json.dumps({"num_hidden_layers": layers}))
        recipe = {"merge_method": "tsv", "base_model": "slow-base",
                  "models": [{"model": "slow-a"}, {"model": "slow-b"}]}
        main = threading.get_ident()

        def interrupt_once_begun():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(self.tmp.glob(".py-slow.weld-tmp-*")):
                time.sleep(0.001)
            signal.pthread_kill(main, signal.SIGINT)

        watcher = threading.Thread(target=interrupt_once_begun)
        watcher.start()
        with self.assertRaises(KeyboardInterrupt):
            weld.merge(recipe, "py-slow", threads=1, quiet=True)
        watcher.join()
        self.assertFalse((self.tmp / "py-slow").exists())
        self.assertEqual(list(self.tmp.glob(".py-slow.weld-tmp-*")), [])
        # Later merges run.
        self.assertEqual(weld.merge(TIES_RECIPE, "py-after-interrupt", quiet=True)["tensors"], len(SHAPES))

    def test_learned_methods_are_left_to_the_cli(self):
        recipe = "merge_method: adamerging\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n" \
                 "parameters:\n  data: prompts.txt\n"
        with self.assertRaisesRegex(weld.Error, "learns from data"):
            weld.merge(recipe, "py-learned")


class InspectTest(Family):
    def test_inspect_gives_what_weld_inspect_json_prints(self):
        weld.merge(TIES_RECIPE, "py-inspected", quiet=True)
        info = weld.inspect("py-inspected")
        self.assertEqual(info["architecture"], "LlamaForCausalLM")
        self.assertEqual(info["num_hidden_layers"], 2)
        self.assertEqual(info["parameters"], sum(int(np.prod(s)) for s in SHAPES.values()))
        self.assertEqual(info["bytes"], 4 * info["parameters"])
        tensors = {t["name"]: t for t in info["tensors"]}
        self.assertEqual(set(tensors), set(SHAPES))
        for name, shape in SHAPES.items():
            self.assertEqual(tuple(tensors[name]["shape"]), shape)
            self.assertEqual(tensors[name]["dtype"], "F32")
            self.assertEqual(tensors[name]["shard"], "model.safetensors")
        cli = subprocess.run([WELD_BINARY, "inspect", "--json", "py-inspected"], capture_output=True, check=True)
        self.assertEqual(json.loads(cli.stdout), info)
        absolute = weld.inspect(self.tmp / "py-inspected")  # a pathlib.Path
        self.assertEqual(absolute.pop("path"), str(self.tmp / "py-inspected"))
        info.pop("path")
        self.assertEqual(absolute, info)

    def test_inspect_errors(self):
        with self.assertRaises(weld.Error):
            weld.inspect("no-such-model")
        with self.assertRaisesRegex(weld.Error, "inspect takes one model folder"):
            weld.inspect("a", "b")


class MethodsTest(unittest.TestCase):
    def test_methods_lists_known_methods_and_parameters(self):
        methods = weld.methods()
        for name in ("linear", "task_arithmetic", "ties", "dare_ties", "slerp", "model_stock", "fisher"):
            self.assertIn(name, methods)
        ties = methods["ties"]
        self.assertEqual(ties["base_model"], "required")
        self.assertEqual(set(ties["per_model"]), {"weight", "density"})
        self.assertEqual(ties["global"]["normalize"]["type"], "bool")
        self.assertEqual(ties["per_model"]["density"]["max"], 1)
        self.assertTrue(methods["slerp"]["global"]["t"]["required"])
        self.assertTrue(ties["data_free"])
        self.assertFalse(methods["fisher"]["data_free"])
        self.assertEqual(methods["linear"]["base_model"], "ignored")
        cli = subprocess.run([WELD_BINARY, "methods", "--json"], capture_output=True, check=True)
        self.assertEqual(json.loads(cli.stdout), methods)


class MergeTensorsTest(unittest.TestCase):
    def setUp(self):
        self.rng = np.random.default_rng(17)

    def normal(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)

    def test_linear(self):
        a, b, c = self.normal(4, 6), self.normal(4, 6), self.normal(4, 6)
        merged = weld.merge_tensors("linear", None, [a, b, c], weight=[0.5, 0.25, 1.0])
        self.assertEqual(merged.dtype, np.float32)
        self.assertEqual(merged.shape, (4, 6))
        expected = (0.5 * a.astype(np.float64) + 0.25 * b + 1.0 * c) / 1.75
        np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-7)
        unnormalized = weld.merge_tensors("linear", None, [a, b], weight=[0.5, 0.25], normalize=False)
        np.testing.assert_allclose(unnormalized, 0.5 * a.astype(np.float64) + 0.25 * b, rtol=1e-6, atol=1e-7)
        # A scalar applies to every model.
        np.testing.assert_allclose(weld.merge_tensors("linear", None, [a, b], weight=2.0),
                                   (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)

    def test_task_arithmetic(self):
        base, a, b = self.normal(3, 5), self.normal(3, 5), self.normal(3, 5)
        merged = weld.merge_tensors("task_arithmetic", base, [a, b], weight=[0.3, 0.6], **{"lambda": 0.5})
        base64 = base.astype(np.float64)
        expected = base64 + 0.5 * (0.3 * (a - base64) + 0.6 * (b - base64))
        np.testing.assert_allclose(merged, expected, rtol=1e-5, atol=1e-6)

    def test_ties_on_a_hand_worked_example(self):
        base = np.zeros(6, dtype=np.float32)
        a = np.array([3.0, -1.0, 0.5, -4.0, 2.0, 0.1], dtype=np.float32)
        b = np.array([-2.0, 2.0, -3.0, -1.0, 0.2, 0.3], dtype=np.float32)
        # density 0.5 keeps floor(0.5 * 6) = 3 largest |delta| per model:
        #   a: [3, 0, 0, -4, 2, 0]      b: [-2, 2, -3, 0, 0, 0]
        # weighted (1 and 0.5):         b: [-1, 1, -1.5, 0, 0, 0]
        # elected sign of the sum:      [+ (2), + (1), - (-1.5), - (-4), + (2), + (0)]
        # agreeing sums / their weights: [3/1, 1/0.5, -1.5/0.5, -4/1, 2/1, 0 (none: divisor 1)]
        expected = np.array([3.0, 2.0, -3.0, -4.0, 2.0, 0.0])
        merged = weld.merge_tensors("ties", base, [a, b], weight=[1.0, 0.5], density=0.5)
        np.testing.assert_allclose(merged, expected, rtol=1e-6)
        # Without normalization the agreeing weighted deltas are summed.
        merged = weld.merge_tensors("ties", base, [a, b], weight=[1.0, 0.5], density=0.5, normalize=False)
        np.testing.assert_allclose(merged, [3.0, 1.0, -1.5, -4.0, 2.0, 0.0], rtol=1e-6)
        # Around a base that is not zero, the same deltas are added to it.
        offset = np.linspace(-1, 1, 6).astype(np.float32)
        merged = weld.merge_tensors("ties", offset, [a + offset, b + offset], weight=[1.0, 0.5], density=0.5)
        np.testing.assert_allclose(merged, expected + offset, rtol=1e-5, atol=1e-6)

    def test_slerp(self):
        base, other = self.normal(5, 7), self.normal(5, 7)
        t = 0.3
        v0, v1 = base.astype(np.float64).ravel(), other.astype(np.float64).ravel()
        theta = np.arccos(np.dot(v0 / np.linalg.norm(v0), v1 / np.linalg.norm(v1)))
        expected = (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)
        merged = weld.merge_tensors("slerp", base, [other], t=t)
        np.testing.assert_allclose(merged.ravel(), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(weld.merge_tensors("slerp", base, [other], t=0.0), base, rtol=1e-6, atol=1e-7)

    def test_random_methods_take_a_seed(self):
        base, a, b = self.normal(64, 64), self.normal(64, 64), self.normal(64, 64)
        one = weld.merge_tensors("dare_ties", base, [a, b], weight=0.5, density=0.3, seed=1)
        again = weld.merge_tensors("dare_ties", base, [a, b], weight=0.5, density=0.3, seed=1)
        other = weld.merge_tensors("dare_ties", base, [a, b], weight=0.5, density=0.3, seed=2)
        np.testing.assert_array_equal(one, again)
        self.assertFalse(np.array_equal(one, other))
        # DARE drops elements: where both task vectors were dropped, the base remains.
        self.assertGreater(np.mean(one == base), 0.3)

    def test_float32_contiguous_inputs_are_read_in_place(self):
        a, b = self.normal(8, 8), self.normal(8, 8)
        before = weld._conversions()
        merged = weld.merge_tensors("linear", None, [a, b], weight=[1.0, 1.0])
        self.assertEqual(weld._conversions(), before)
        np.testing.assert_allclose(merged, (a.astype(np.float64) + b) / 2, rtol=1e-6)

    def test_other_dtypes_and_layouts_are_converted(self):
        a64 = self.rng.standard_normal((6, 4))
        b = self.normal(4, 6).T  # float32, not C-contiguous
        c = self.normal(6, 8)[:, ::2]  # a strided view
        d16 = self.normal(6, 4).astype(np.float16)
        big_endian = self.normal(6, 4).astype(">f4")
        ints = np.arange(24, dtype=np.int32).reshape(6, 4)
        tensors = [a64, b, c, d16, big_endian, ints]
        before = weld._conversions()
        merged = weld.merge_tensors("linear", None, tensors, weight=1.0)
        self.assertEqual(weld._conversions(), before + len(tensors))
        expected = sum(t.astype(np.float32).astype(np.float64) for t in tensors) / len(tensors)
        np.testing.assert_allclose(merged, expected, rtol=1e-6, atol=1e-6)
        # The inputs are left as they were.
        self.assertEqual(a64.dtype, np.float64)
        self.assertFalse(b.flags.c_contiguous)

    def test_wrong_arguments(self):
        a, b = self.normal(4, 4), self.normal(4, 4)
        with self.assertRaisesRegex(TypeError, "unexpected keyword argument 'densty'.*density"):
            weld.merge_tensors("ties", a, [a, b], densty=0.5)
        with self.assertRaisesRegex(ValueError, r"tensors\[1\] has shape \(4, 5\) where tensors\[0\] has \(4, 4\)"):
            weld.merge_tensors("linear", None, [a, self.normal(4, 5)])
        with self.assertRaisesRegex(ValueError, r"base has shape \(2, 8\)"):
            weld.merge_tensors("ties", self.normal(2, 8), [a, b])
        with self.assertRaisesRegex(TypeError, "tensors\\[1\\] must be a NumPy array, not list"):
            weld.merge_tensors("linear", None, [a, [1.0, 2.0]])
        with self.assertRaisesRegex(TypeError, "complex"):
            weld.merge_tensors("linear", None, [a, b.astype(np.complex64)])
        with self.assertRaisesRegex(TypeError, "tensors must be a list"):
            weld.merge_tensors("linear", None, a)
        with self.assertRaisesRegex(ValueError, "tensors is empty"):
            weld.merge_tensors("linear", None, [])
        with self.assertRaisesRegex(TypeError, "must be a number or a boolean"):
            weld.merge_tensors("linear", None, [a, b], weight="heavy")

    def test_nonfinite_inputs_are_refused_unless_allowed(self):
        a, b = self.normal(2, 3), self.normal(2, 3)
        b[1, 0] = np.nan
        with self.assertRaisesRegex(weld.Error, r"tensors\[1\]: element 3 is NaN"):
            weld.merge_tensors("linear", None, [a, b], weight=1.0)
        merged = weld.merge_tensors("linear", None, [a, b], weight=1.0, allow_nonfinite=True)
        self.assertTrue(np.isnan(merged[1, 0]))
        np.testing.assert_allclose(merged[0], (a[0].astype(np.float64) + b[0]) / 2, rtol=1e-6)
        base = np.full((2, 3), np.inf, dtype=np.float32)
        with self.assertRaisesRegex(weld.Error, r"base: element 0 is \+Inf"):
            weld.merge_tensors("task_arithmetic", base, [a], weight=1.0)

    def test_weld_errors_carry_weld_messages(self):
        a, b = self.normal(4, 4), self.normal(4, 4)
        cases = [
            (lambda: weld.merge_tensors("tiez", a, [a, b]), "unknown method 'tiez'"),
            (lambda: weld.merge_tensors("ties", None, [a, b]), "method 'ties' needs a base tensor"),
            (lambda: weld.merge_tensors("linear", a, [a, b]), "method 'linear' takes no base"),
            (lambda: weld.merge_tensors("ties", a, [a, b], density=2.0), "parameter 'density' is 2"),
            (lambda: weld.merge_tensors("ties", a, [a, b], density=[0.5]), "'density' has 1 values for 2 tensors"),
            (lambda: weld.merge_tensors("slerp", a, [b]), "needs parameter 't'"),
            (lambda: weld.merge_tensors("slerp", a, [b], t=[0.5]), "'t' of method 'slerp' is global"),
            (lambda: weld.merge_tensors("slerp", a, [a, b], t=0.5), "slerp merge needs 2 source(s), got 3"),
            (lambda: weld.merge_tensors("ties", a, [a, b], normalize=0.5), "'normalize' must be true or false"),
            (lambda: weld.merge_tensors("fisher", a, [a, b]), "learns from data or statistics"),
            (lambda: weld.merge_tensors("localize_stitch", a, [a, b], mode=1.0), "'mode' of method 'localize_stitch' is text"),
        ]
        for call, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(weld.Error) as caught:
                    call()
                self.assertIn(message, str(caught.exception))


if __name__ == "__main__":
    unittest.main()

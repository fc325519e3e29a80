// The Python module `weld` (docs/python.md): a thin layer that turns Python values into the
// engine's requests and its answers into Python values. Merging, inspecting and describing
// methods are the engine's (exec/merge.h, exec/describe.h, plan/tensor_merge.h), shared with the CLI.
#include "cli/thread_count.h"
#include "exec/describe.h"
#include "exec/executor.h"
#include "exec/merge.h"
#include "io/output_folder.h"
#include "methods/method.h"
#include "plan/recipe.h"
#include "plan/tensor_merge.h"
#include "util/error.h"
#include "util/size.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <yaml-cpp/yaml.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <future>
#include <thread>
#include <unistd.h>

namespace py = pybind11;

namespace weld::python {
namespace {

// merge_tensors' inputs that were copied because they were not float32 and C-contiguous; tests
// read it to see that the others are used in place.
std::atomic<uint64_t> g_conversions{0};

std::string type_name(py::handle value) {
	return py::str(py::type::handle_of(value).attr("__name__"));
}

// A str or os.PathLike as a path.
std::string fspath(py::handle path) {
	return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

bool is_path(py::handle value) {
	return py::isinstance<py::str>(value) || py::hasattr(value, "__fspath__");
}

// JSON (describe_*) as Python values: objects as dicts in the JSON's order.
py::object to_python(const nlohmann::ordered_json& j) {
	switch (j.type()) {
	case nlohmann::ordered_json::value_t::boolean:
		return py::bool_(j.get<bool>());
	case nlohmann::ordered_json::value_t::number_integer:
		return py::int_(j.get<int64_t>());
	case nlohmann::ordered_json::value_t::number_unsigned:
		return py::int_(j.get<uint64_t>());
	case nlohmann::ordered_json::value_t::number_float:
		return py::float_(j.get<double>());
	case nlohmann::ordered_json::value_t::string:
		return py::str(j.get<std::string>());
	case nlohmann::ordered_json::value_t::array: {
		py::list list;
		for (const auto& item : j)
			list.append(to_python(item));
		return list;
	}
	case nlohmann::ordered_json::value_t::object: {
		py::dict dict;
		for (const auto& [key, item] : j.items())
			dict[py::str(key)] = to_python(item);
		return dict;
	}
	default:
		return py::none();
	}
}

// ---- recipes given as dicts -------------------------------------------------------------

// Whether a string reads back from plain YAML as the same string (not a number, bool or null,
// nor YAML syntax); others are written double-quoted.
bool is_plain_yaml(const std::string& s) {
	static const char* const special[] = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"};
	if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '/' || s[0] == '_')) return false;
	std::string lower;
	for (const char c : s) {
		if (!std::isalnum(static_cast<unsigned char>(c)) &&
		    std::string_view("_-./+@").find(c) == std::string_view::npos)
			return false;
		lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
	}
	return std::find(std::begin(special), std::end(special), lower) == std::end(special);
}

void emit_yaml(YAML::Emitter& out, py::handle value, const std::string& where) {
	if (value.is_none()) {
		out << YAML::Null;
	} else if (py::isinstance<py::bool_>(value)) {
		out << (value.cast<bool>() ? "true" : "false");
	} else if (is_path(value)) {
		const auto s = fspath(value);
		if (is_plain_yaml(s))
			out << s;
		else
			out << YAML::DoubleQuoted << s;
	} else if (py::hasattr(value, "__index__")) { // int, NumPy integers
		out << py::repr(py::int_(py::reinterpret_borrow<py::object>(value))).cast<std::string>();
	} else if (py::hasattr(value, "__float__")) { // float, NumPy floats: repr round-trips
		const double d = py::float_(py::reinterpret_borrow<py::object>(value));
		out << (std::isnan(d)   ? std::string(".nan")
		        : std::isinf(d) ? std::string(d > 0 ? ".inf" : "-.inf")
		                        : py::repr(py::float_(d)).cast<std::string>());
	} else if (py::isinstance<py::dict>(value)) {
		out << YAML::BeginMap;
		for (const auto& [key, item] : py::reinterpret_borrow<py::dict>(value)) {
			if (!py::isinstance<py::str>(key))
				throw py::type_error(fmt::format("recipe{}: keys must be strings, not {}", where, type_name(key)));
			const auto name = key.cast<std::string>();
			out << YAML::Key << name << YAML::Value;
			emit_yaml(out, item, fmt::format("{}['{}']", where, name));
		}
		out << YAML::EndMap;
	} else if (py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value)) {
		out << YAML::BeginSeq;
		size_t i = 0;
		for (const auto& item : value)
			emit_yaml(out, item, fmt::format("{}[{}]", where, i++));
		out << YAML::EndSeq;
	} else {
		throw py::type_error(fmt::format("recipe{}: a {} has no YAML form (use dicts, lists, strings, numbers, "
		                                 "booleans and None)",
		                                 where, type_name(value)));
	}
}

std::string dict_to_yaml(const py::dict& recipe) {
	YAML::Emitter out;
	emit_yaml(out, recipe, "");
	return std::string(out.c_str()) + "\n";
}

// recipe_path and recipe_text of MergeOptions from a path, a YAML string or a dict.
void set_recipe(MergeOptions& options, const py::object& recipe) {
	if (py::isinstance<py::dict>(recipe)) {
		options.recipe_path = "<recipe dict>";
		options.recipe_text = dict_to_yaml(recipe);
		return;
	}
	if (py::isinstance<py::str>(recipe)) {
		const auto text = recipe.cast<std::string>();
		// A path is one line; a recipe has several, or is one line of flow style ({...}).
		const auto first = text.find_first_not_of(" \t");
		if (text.find('\n') != std::string::npos || (first != std::string::npos && text[first] == '{')) {
			options.recipe_path = "<recipe string>";
			options.recipe_text = text;
		} else {
			options.recipe_path = text;
		}
		return;
	}
	if (py::hasattr(recipe, "__fspath__")) {
		options.recipe_path = fspath(recipe);
		return;
	}
	throw py::type_error(
	    fmt::format("merge(): recipe must be a path, a YAML string or a dict, not {}", type_name(recipe)));
}

// ---- merge() ----------------------------------------------------------------------------

bool bool_option(const char* name, py::handle value) {
	if (!py::isinstance<py::bool_>(value))
		throw py::type_error(fmt::format("merge(): {} must be True or False, not {}", name, type_name(value)));
	return value.cast<bool>();
}

// A non-negative integer option of `function` (merge, merge_tensors), at least min.
uint64_t count_option(const char* function, const char* name, py::handle value, uint64_t min) {
	if (py::isinstance<py::bool_>(value) || !py::hasattr(value, "__index__"))
		throw py::type_error(fmt::format("{}(): {} must be an integer, not {}", function, name, type_name(value)));
	const py::int_ number(py::reinterpret_borrow<py::object>(value));
	if (number < py::int_(min) || number > py::int_(UINT64_MAX))
		throw py::value_error(fmt::format("{}(): {} must be between {} and 2**64-1, got {}", function, name, min,
		                                  py::repr(number).cast<std::string>()));
	return number.cast<uint64_t>();
}

// Bytes, or a size as `weld merge` takes it ("4GB", "500MB").
uint64_t size_option(const char* name, py::handle value) {
	if (py::isinstance<py::str>(value)) return parse_size(value.cast<std::string>(), name);
	return count_option("merge", name, value, 1);
}

struct PythonMerge {
	MergeOptions options;
	bool quiet = false;
};

PythonMerge merge_options(const py::object& recipe, const py::object& out, const py::kwargs& kwargs) {
	PythonMerge m;
	auto& o = m.options;
	set_recipe(o, recipe);
	if (!is_path(out)) throw py::type_error(fmt::format("merge(): out must be a path, not {}", type_name(out)));
	o.out_dir = fspath(out);
	unsigned threads = std::max(1u, std::thread::hardware_concurrency());
	o.exec.memory_budget = default_memory_budget();
	for (const auto& [key, value] : kwargs) {
		const auto name = key.cast<std::string>();
		if (name == "threads")
			threads = static_cast<unsigned>(std::min<uint64_t>(count_option("merge", "threads", value, 1), UINT_MAX));
		else if (name == "memory_budget")
			o.exec.memory_budget = size_option("memory_budget", value);
		else if (name == "out_shard_size")
			o.exec.max_shard_bytes = size_option("out_shard_size", value);
		else if (name == "seed")
			o.seed = count_option("merge", "seed", value, 0);
		else if (name == "force")
			o.force = bool_option("force", value);
		else if (name == "dry_run")
			o.dry_run = bool_option("dry_run", value);
		else if (name == "quiet")
			m.quiet = bool_option("quiet", value);
		else if (name == "verbose")
			o.exec.verbose = bool_option("verbose", value);
		else if (name == "allow_nonfinite")
			o.exec.allow_nonfinite = bool_option("allow_nonfinite", value);
		else
			throw py::type_error(
			    fmt::format("merge() got an unexpected keyword argument '{}' (options: threads, "
			                "memory_budget, out_shard_size, seed, force, dry_run, quiet, verbose, allow_nonfinite)",
			                name));
	}
	o.exec.threads = cli::capped_thread_count(threads, "threads", m.quiet);
	o.exec.verbose = o.exec.verbose && !m.quiet;
	o.exec.progress = !m.quiet && isatty(STDERR_FILENO);
	return m;
}

// Methods that learn from data run in weld-torch, which `weld merge` hands the recipe to.
void refuse_learned(const MergeOptions& options) {
	const auto text = options.recipe_text.empty() ? read_text_file(options.recipe_path) : options.recipe_text;
	const auto recipe = parse_recipe(text, options.recipe_path.string());
	const auto* method = find_method(recipe.merge_method);
	if (method && learns_from_data(method->info(), recipe))
		throw Error(fmt::format("method '{}' learns from data with the model runtime: run `weld merge` (weld-torch) "
		                        "for this recipe",
		                        recipe.merge_method));
}

// Runs the merge on a thread of its own while this one waits without the GIL, checking for
// Ctrl-C in between: a KeyboardInterrupt cancels the merge (its partial output is removed)
// and is raised once the merge has stopped.
MergeSummary run_interruptible(const MergeOptions& options) {
	auto done = std::async(std::launch::async, [&options] { return run_merge(options); });
	for (;;) {
		{
			py::gil_scoped_release release;
			if (done.wait_for(std::chrono::milliseconds(100)) == std::future_status::ready) break;
		}
		if (PyErr_CheckSignals() != 0) {
			request_cancel();
			{
				py::gil_scoped_release release;
				done.wait();
			}
			clear_cancel();
			try {
				done.get();
			} catch (const std::exception&) {
				// "interrupted": the KeyboardInterrupt says it
			}
			throw py::error_already_set();
		}
	}
	return done.get();
}

py::dict merge(const py::object& recipe, const py::object& out, const py::kwargs& kwargs) {
	const auto m = merge_options(recipe, out, kwargs);
	refuse_learned(m.options);
	const auto summary = run_interruptible(m.options);
	if (!m.quiet) {
		const auto warn = py::module_::import("warnings").attr("warn");
		for (const auto& warning : summary.warnings)
			warn(py::str("weld: " + warning));
	}
	py::dict result;
	result["tensors"] = summary.tensors;
	result["shards"] = summary.shards;
	result["bytes_written"] = summary.bytes_written;
	result["seconds"] = summary.seconds;
	py::list warnings;
	for (const auto& warning : summary.warnings)
		warnings.append(warning);
	result["warnings"] = warnings;
	if (m.options.dry_run) result["plan"] = summary.plan_text;
	return result;
}

// ---- merge_tensors() --------------------------------------------------------------------

// A float32 C-contiguous array for `value`: the array itself when it is one, else a converted
// copy (counted in g_conversions). Refuses what is not an array of real numbers.
py::array_t<float> float32_array(py::handle value, const std::string& what) {
	if (!py::isinstance<py::array>(value))
		throw py::type_error(fmt::format("merge_tensors(): {} must be a NumPy array, not {}", what, type_name(value)));
	const auto array = py::reinterpret_borrow<py::array>(value);
	const char kind = array.dtype().kind();
	if (kind != 'f' && kind != 'i' && kind != 'u')
		throw py::type_error(fmt::format("merge_tensors(): {} has dtype {}; weld merges real numbers (float32, "
		                                 "float64, float16, integers)",
		                                 what, py::str(array.dtype()).cast<std::string>()));
	if (array.ndim() == 0 || array.size() == 0)
		throw py::value_error(fmt::format("merge_tensors(): {} is empty or a scalar; weld merges tensors", what));
	if (py::isinstance<py::array_t<float, py::array::c_style>>(array))
		return py::reinterpret_borrow<py::array_t<float>>(array);
	g_conversions++;
	return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(array);
}

std::vector<uint64_t> shape_of(const py::array& array) {
	return {array.shape(), array.shape() + array.ndim()};
}

ParamValue param_value(py::handle value, const std::string& name) {
	if (py::isinstance<py::bool_>(value)) return {.number = value.cast<bool>() ? 1.0 : 0.0, .is_bool = true};
	if (py::hasattr(value, "__float__") && !py::isinstance<py::str>(value))
		return {.number = py::float_(py::reinterpret_borrow<py::object>(value))};
	throw py::type_error(
	    fmt::format("merge_tensors(): parameter '{}' must be a number or a boolean, not {}", name, type_name(value)));
}

// A scalar for every model, or a list (or 1-D array) of one value per model.
ParamArgument param_argument(py::handle value, const std::string& name) {
	ParamArgument argument;
	const bool sequence = py::isinstance<py::list>(value) || py::isinstance<py::tuple>(value) ||
	                      (py::isinstance<py::array>(value) && py::reinterpret_borrow<py::array>(value).ndim() == 1);
	if (!sequence) {
		argument.values.push_back(param_value(value, name));
		return argument;
	}
	argument.per_model = true;
	for (const auto& item : value)
		argument.values.push_back(param_value(item, name));
	return argument;
}

// Keywords a method does not take are TypeErrors, as for any Python function.
void check_keyword(const std::string& method, const std::string& name) {
	const auto* found = find_method(method);
	if (!found) return; // merge_tensor names the unknown method
	std::vector<std::string> names;
	for (const auto* defs : {&found->info().global_params, &found->info().model_params})
		for (const auto& def : *defs) {
			if (def.name == name) return; // a text one is refused by merge_tensor, which says why
			if (def.type != ParamType::Text) names.push_back(def.name);
		}
	throw py::type_error(fmt::format("merge_tensors() got an unexpected keyword argument '{}': method '{}' takes {}",
	                                 name, method,
	                                 names.empty() ? "no parameters" : fmt::format("{}", fmt::join(names, ", "))));
}

py::array_t<float> merge_tensors(const std::string& method, const py::object& base, const py::object& tensors,
                                 const py::kwargs& kwargs) {
	if (!py::isinstance<py::list>(tensors) && !py::isinstance<py::tuple>(tensors))
		throw py::type_error(
		    fmt::format("merge_tensors(): tensors must be a list of NumPy arrays, not {}", type_name(tensors)));
	TensorMergeRequest request;
	request.method = method;
	std::vector<py::array_t<float>> arrays; // kept alive while the engine reads them
	for (const auto& item : tensors)
		arrays.push_back(float32_array(item, fmt::format("tensors[{}]", arrays.size())));
	if (arrays.empty()) throw py::value_error("merge_tensors(): tensors is empty");
	if (!base.is_none()) arrays.push_back(float32_array(base, "base"));
	request.shape = shape_of(arrays.front());
	for (size_t i = 1; i < arrays.size(); i++)
		if (shape_of(arrays[i]) != request.shape)
			throw py::value_error(fmt::format("merge_tensors(): {} has shape ({}) where tensors[0] has ({})",
			                                  base.is_none() || i + 1 < arrays.size() ? fmt::format("tensors[{}]", i)
			                                                                          : std::string("base"),
			                                  fmt::join(shape_of(arrays[i]), ", "), fmt::join(request.shape, ", ")));
	for (auto& array : arrays)
		request.models.emplace_back(array.data(), static_cast<size_t>(array.size()));
	if (!base.is_none()) {
		request.base = request.models.back();
		request.models.pop_back();
	}
	for (const auto& [key, value] : kwargs) {
		const auto name = key.cast<std::string>();
		if (name == "seed") {
			request.seed = count_option("merge_tensors", "seed", value, 0);
		} else if (name == "allow_nonfinite") {
			if (!py::isinstance<py::bool_>(value))
				throw py::type_error(
				    fmt::format("merge_tensors(): allow_nonfinite must be True or False, not {}", type_name(value)));
			request.allow_nonfinite = value.cast<bool>();
		} else if (name == "tensor_name") {
			if (!py::isinstance<py::str>(value))
				throw py::type_error(
				    fmt::format("merge_tensors(): tensor_name must be a string, not {}", type_name(value)));
			request.tensor_name = value.cast<std::string>();
		} else {
			check_keyword(method, name);
			request.params[name] = param_argument(value, name);
		}
	}
	py::array_t<float> out(std::vector<py::ssize_t>(request.shape.begin(), request.shape.end()));
	std::span<float> out_span(out.mutable_data(), static_cast<size_t>(out.size()));
	{
		py::gil_scoped_release release;
		merge_tensor(request, out_span);
	}
	return out;
}

} // namespace
} // namespace weld::python

PYBIND11_MODULE(weld, m) {
	using namespace weld::python;
	m.doc() = "weld: merge Hugging Face checkpoints (mergekit recipes) and tensors with weld's merge methods";
	py::register_exception<weld::Error>(m, "Error", PyExc_Exception);

	m.def("merge", &merge, py::arg("recipe"), py::arg("out"),
	      "merge(recipe, out, **options) -> dict\n\n"
	      "Runs a merge recipe (a YAML file path, a YAML string or a dict) into the folder out, as `weld merge`.\n"
	      "Options: threads, memory_budget, out_shard_size (bytes or '4GB'), seed, force, dry_run, quiet, verbose,\n"
	      "allow_nonfinite.\n"
	      "Returns {'tensors', 'shards', 'bytes_written', 'seconds', 'warnings'} (and 'plan' for dry_run).");
	m.def(
	    "inspect",
	    [](const py::args& paths) {
		    std::vector<std::string> list;
		    for (const auto& path : paths)
			    list.push_back(fspath(path));
		    return to_python(weld::describe_inspected(list));
	    },
	    "inspect(path, *more) -> dict\n\n"
	    "A model folder's tensors, dtypes, shapes, shards and parameter count, or LoRA adapters compared:\n"
	    "what `weld inspect --json` prints.");
	m.def(
	    "methods", [] { return to_python(weld::describe_methods()); },
	    "methods() -> dict\n\nEvery merge method by name: its description, base-model use and parameters "
	    "('global' and 'per_model'), and whether merge_tensors can run it ('data_free').");
	m.def("merge_tensors", &merge_tensors, py::arg("method"), py::arg("base"), py::arg("tensors"),
	      "merge_tensors(method, base, tensors, **params) -> numpy.ndarray (float32)\n\n"
	      "Merges NumPy arrays of one shape with a data-free method's kernel. base: an array, or None for\n"
	      "methods without a base. params: the method's parameters, a scalar for every model or a list of\n"
	      "one value per tensor; seed= for random methods, tensor_name= for their random streams;\n"
	      "allow_nonfinite=True merges NaN/Inf inputs instead of refusing them.\n"
	      "float32 C-contiguous arrays are read in place; others are converted to float32.");
	m.def(
	    "_conversions", [] { return g_conversions.load(); },
	    "How many merge_tensors inputs were converted to float32 copies (for tests).");
}

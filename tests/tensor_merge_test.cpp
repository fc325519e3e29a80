// plan/tensor_merge.h (weld.merge_tensors' engine) and exec/describe.h's method descriptions.
// Expected values are worked out by hand in the comments.
#include "exec/describe.h"
#include "plan/tensor_merge.h"
#include "util/error.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace weld {
namespace {

ParamArgument scalar(double v) {
	return {.values = {{.number = v}}};
}

ParamArgument per_model(std::vector<double> values) {
	ParamArgument argument{.per_model = true};
	for (const double v : values)
		argument.values.push_back({.number = v});
	return argument;
}

// The message merge_tensor throws ("" if none).
std::string merge_error(const TensorMergeRequest& request) {
	std::vector<float> out(request.shape.empty() ? 0 : request.shape[0]);
	try {
		merge_tensor(request, out);
	} catch (const Error& e) {
		return e.what();
	}
	return "";
}

const std::vector<float> kA = {1, 2, 3, 4}, kB = {3, 6, -1, 0}, kBase = {1, 1, 1, 1};

TEST(TensorMerge, LinearWithPerModelWeights) {
	TensorMergeRequest request{.method = "linear", .shape = {4}, .models = {kA, kB}};
	request.params["weight"] = per_model({1, 3});
	std::vector<float> out(4);
	merge_tensor(request, out);
	// (1 a + 3 b) / 4
	EXPECT_EQ(out, (std::vector<float>{2.5f, 5.0f, 0.0f, 1.0f}));
}

TEST(TensorMerge, TaskArithmeticScalarWeightAndBaseLast) {
	TensorMergeRequest request{.method = "task_arithmetic", .shape = {4}, .models = {kA, kB}, .base = kBase};
	request.params["weight"] = scalar(0.5);
	std::vector<float> out(4);
	merge_tensor(request, out);
	// base + 0.5 (a - base) + 0.5 (b - base) = (a + b) / 2
	EXPECT_EQ(out, (std::vector<float>{2.0f, 4.0f, 1.0f, 2.0f}));
}

TEST(TensorMerge, RefusesWhatARecipeWouldRefuse) {
	TensorMergeRequest ties{.method = "ties", .shape = {4}, .models = {kA, kB}, .base = kBase};
	ties.params["weight"] = scalar(1);
	ties.params["density"] = scalar(2);
	EXPECT_NE(merge_error(ties).find("parameter 'density' is 2 for tensor 'tensor', outside (0, 1]"), std::string::npos)
	    << merge_error(ties);
	ties.params["density"] = per_model({0.5});
	EXPECT_NE(merge_error(ties).find("'density' has 1 values for 2 tensors"), std::string::npos);
	ties.params.erase("density");
	ties.params.erase("weight");
	EXPECT_NE(merge_error(ties).find("method 'ties' needs parameter 'weight' for tensors[0]"), std::string::npos)
	    << merge_error(ties);
	ties.params["bogus"] = scalar(1);
	EXPECT_NE(merge_error(ties).find("method 'ties' has no parameter 'bogus'"), std::string::npos);

	TensorMergeRequest linear{.method = "linear", .shape = {4}, .models = {kA, kB}, .base = kBase};
	EXPECT_NE(merge_error(linear).find("method 'linear' takes no base"), std::string::npos);
	TensorMergeRequest fisher{.method = "fisher", .shape = {4}, .models = {kA, kB}};
	EXPECT_NE(merge_error(fisher).find("learns from data or statistics"), std::string::npos);
	TensorMergeRequest unknown{.method = "tiez", .shape = {4}, .models = {kA}};
	EXPECT_NE(merge_error(unknown).find("unknown method 'tiez'"), std::string::npos);
	TensorMergeRequest short_shape{.method = "linear", .shape = {3}, .models = {kA, kB}};
	short_shape.params["weight"] = scalar(1);
	EXPECT_NE(merge_error(short_shape).find("a tensor has 4 elements where the shape [3] has 3"), std::string::npos)
	    << merge_error(short_shape);
}

TEST(Describe, MethodsCarryTheirDeclaredParameters) {
	const auto methods = describe_methods();
	ASSERT_TRUE(methods.contains("ties"));
	const auto& ties = methods["ties"];
	EXPECT_EQ(ties["base_model"], "required");
	EXPECT_EQ(ties["per_model"]["density"]["type"], "number");
	EXPECT_EQ(ties["per_model"]["density"]["max"], 1.0);
	EXPECT_EQ(ties["per_model"]["density"]["min_exclusive"], true);
	EXPECT_EQ(ties["global"]["normalize"]["default"], true);
	EXPECT_EQ(ties["data_free"], true);
	EXPECT_EQ(methods["regmean"]["data_free"], false);
	EXPECT_EQ(methods["linear"]["base_model"], "ignored");
	EXPECT_EQ(methods.size(), all_methods().size());
}

} // namespace
} // namespace weld

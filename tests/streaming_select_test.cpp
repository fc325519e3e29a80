// The streaming forms of localize_stitch, arcee_fusion, pcb, widen and lrp against their
// whole-tensor references, on rows that cross block boundaries, at one and two threads.
#include "streaming_fixture.h"

namespace weld {
namespace {

class StreamingSelectTest : public StreamingMethodsTest {};

// Exact top-k masks and the same sums in the same order: the same bytes.
TEST_F(StreamingSelectTest, LocalizeStitch) {
	EXPECT_EQ(merge_against_reference("localize_stitch", "", "density: 0.1", false), 0.0);
	EXPECT_EQ(merge_against_reference("localize_stitch", "", "density: 1.0", false, 2), 0.0);
}

// Row softmax sums are added per block piece, so each row's KL may differ by rounding; the
// quartiles are selected exactly from the scores.
TEST_F(StreamingSelectTest, ArceeFusion) {
	EXPECT_LT(merge_against_reference("arcee_fusion", "", "", false, 1), 1e-7);
}

// The softmax sums over the tensor are added per block, then in block order: the scores may
// differ by rounding; the thresholds are selected exactly from the scores.
TEST_F(StreamingSelectTest, Pcb) {
	EXPECT_LT(merge_against_reference("pcb", "ratio: 0.3", "", false, 2), 1e-7);
}

// ratio 1 drops nothing: no threshold passes.
TEST_F(StreamingSelectTest, PcbKeepingAll) {
	EXPECT_LT(merge_against_reference("pcb", "ratio: 1.0, lambda: 0.7", "", false, 2), 1e-7);
}

// Column and row sums are added per block then combined in a fixed tree, the vectors' mean
// |delta| per block in block order: within rounding.
TEST_F(StreamingSelectTest, Widen) {
	EXPECT_LT(merge_against_reference("widen", "", "", false, 2), 1e-7);
	EXPECT_LT(
	    merge_against_reference("widen", "above_average_value_ratio: 0.8, score_calibration_value: 0.6", "", false, 3),
	    1e-7);
}

// Exact top-k of |delta| per model, the weighted sum in the same order: the same bytes.
TEST_F(StreamingSelectTest, LrpWithoutRelevance) {
	EXPECT_EQ(merge_against_reference("lrp", "density: 0.3", "", true, 3), 0.0);
	EXPECT_EQ(merge_against_reference("lrp", "density: 0.0", "", true, 2), 0.0);
	EXPECT_EQ(merge_against_reference("lrp", "density: 1.0", "", true, 2), 0.0);
}

} // namespace
} // namespace weld

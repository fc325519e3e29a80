// The merge-quality benchmark's procedural tasks: deterministic, correct, split and written as JSONL.
#include "nn/tasks.h"
#include "test_util.h"
#include "util/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <string>
#include <vector>

namespace weld {
namespace {

using tasks::all_tasks;
using tasks::Example;
using tasks::is_held_out;
using tasks::make_example;
using tasks::Task;

constexpr uint64_t kSeed = 1234;

std::string name(Task task) {
	return std::string(tasks::task_info(task).name);
}

// The part of the prompt between the task tag and the final '='.
std::string body(Task task, const std::string& prompt) {
	const auto tag = tasks::task_info(task).tag;
	EXPECT_TRUE(prompt.starts_with(tag)) << prompt;
	EXPECT_TRUE(prompt.ends_with("=")) << prompt;
	return prompt.substr(tag.size(), prompt.size() - tag.size() - 1);
}

bool all_lowercase(const std::string& s) {
	return std::all_of(s.begin(), s.end(), [](char c) { return c >= 'a' && c <= 'z'; });
}

bool is_cipher(Task task) {
	return task >= Task::cipher_copy;
}

// A cipher task's answer: out[i] = s[source(i)] by the task's rule, then substituted.
std::string expected_cipher_answer(Task task, const std::string& s) {
	const tasks::Cipher& cipher = tasks::cipher_of(task);
	const size_t n = s.size();
	EXPECT_TRUE(n >= 3 && n <= 6) << s;
	std::string out(n, ' ');
	for (size_t i = 0; i < n; ++i) {
		switch (task) {
		case Task::cipher_reverse:
			out[i] = s[n - 1 - i];
			break;
		case Task::cipher_swap:
			out[i] = (i ^ 1) < n ? s[i ^ 1] : s[i];
			break;
		case Task::cipher_rotl:
			out[i] = s[(i + 1) % n];
			break;
		case Task::cipher_rotr:
			out[i] = s[(i + n - 1) % n];
			break;
		case Task::cipher_evens:
			out[i] = i < (n + 1) / 2 ? s[2 * i] : s[2 * (i - (n + 1) / 2) + 1];
			break;
		case Task::cipher_halves:
			out[i] = s[(i + n / 2) % n];
			break;
		default:
			out[i] = s[i];
			break; // cipher_copy; cipher_sort sorts below
		}
	}
	if (task == Task::cipher_sort) std::sort(out.begin(), out.end());
	for (char& c : out) {
		const auto at = cipher.symbols.find(c);
		EXPECT_NE(at, std::string_view::npos) << "not a symbol of " << tasks::task_info(task).name << ": " << s;
		c = at == std::string_view::npos ? '?' : cipher.substitute[at];
	}
	return out;
}

// Each task's answer, worked out again here from the prompt alone (without the end byte).
std::string expected_answer(Task task, const std::string& prompt) {
	const std::string s = body(task, prompt);
	if (is_cipher(task)) return expected_cipher_answer(task, s);
	switch (task) {
	case Task::addition: {
		const auto plus = s.find('+');
		EXPECT_NE(plus, std::string::npos) << prompt;
		const std::string a = s.substr(0, plus), b = s.substr(plus + 1);
		for (const std::string& operand : {a, b}) {
			EXPECT_TRUE(!operand.empty() && operand.size() <= 2) << prompt;
			EXPECT_TRUE(std::all_of(operand.begin(), operand.end(), [](char c) { return c >= '0' && c <= '9'; }))
			    << prompt;
			EXPECT_TRUE(operand == "0" || operand[0] != '0') << "leading zero: " << prompt;
		}
		return std::to_string(std::stoi(a) + std::stoi(b));
	}
	case Task::reverse:
		EXPECT_TRUE(all_lowercase(s) && s.size() >= 4 && s.size() <= 8) << prompt;
		return std::string(s.rbegin(), s.rend());
	case Task::sort: {
		EXPECT_TRUE(all_lowercase(s) && s.size() >= 4 && s.size() <= 8) << prompt;
		std::string sorted = s;
		std::sort(sorted.begin(), sorted.end());
		return sorted;
	}
	case Task::count: {
		EXPECT_TRUE(s.size() >= 2 && s[1] == ':') << prompt;
		const char target = s[0];
		const std::string letters = s.substr(2);
		EXPECT_TRUE(all_lowercase(letters) && letters.size() >= 4 && letters.size() <= 10) << prompt;
		int n = 0;
		for (char c : letters)
			n += c == target;
		return std::to_string(n);
	}
	case Task::caesar: {
		EXPECT_TRUE(s.size() >= 3 && s[0] >= '1' && s[0] <= '9' && s[1] == ':') << prompt;
		const int shift = s[0] - '0';
		const std::string letters = s.substr(2);
		EXPECT_TRUE(all_lowercase(letters) && letters.size() >= 4 && letters.size() <= 8) << prompt;
		std::string shifted;
		for (char c : letters)
			shifted += c + shift > 'z' ? static_cast<char>(c + shift - 26) : static_cast<char>(c + shift);
		return shifted;
	}
	case Task::brackets: {
		EXPECT_TRUE(s.size() >= 2 && s.size() <= 12) << prompt;
		std::vector<char> stack;
		bool ok = true;
		for (char c : s) {
			if (c == '(' || c == '[') {
				stack.push_back(c);
			} else if (c == ')' || c == ']') {
				ok = ok && !stack.empty() && stack.back() == (c == ')' ? '(' : '[');
				if (!stack.empty()) stack.pop_back();
			} else {
				ADD_FAILURE() << "not a bracket: " << prompt;
			}
		}
		return ok && stack.empty() ? "yes" : "no";
	}
	case Task::multiply: {
		const auto times = s.find('*');
		EXPECT_TRUE(times != std::string::npos && times + 2 == s.size()) << prompt;
		const std::string a = s.substr(0, times);
		const char digit = s.back();
		EXPECT_TRUE(!a.empty() && a.size() <= 3 && (a == "0" || a[0] != '0')) << prompt;
		EXPECT_TRUE(digit >= '2' && digit <= '9') << prompt;
		return std::to_string(std::stoi(a) * (digit - '0'));
	}
	case Task::maximum: {
		std::vector<int> numbers;
		for (size_t start = 0; start <= s.size();) {
			const size_t comma = std::min(s.find(',', start), s.size());
			numbers.push_back(std::stoi(s.substr(start, comma - start)));
			EXPECT_TRUE(comma > start && comma - start <= 2) << prompt;
			start = comma + 1;
		}
		EXPECT_TRUE(numbers.size() >= 2 && numbers.size() <= 6) << prompt;
		return std::to_string(*std::max_element(numbers.begin(), numbers.end()));
	}
	case Task::swap: {
		EXPECT_TRUE(all_lowercase(s) && s.size() >= 4 && s.size() <= 8) << prompt;
		std::string swapped;
		for (size_t i = 0; i < s.size(); i += 2)
			swapped += i + 1 < s.size() ? std::string{s[i + 1], s[i]} : std::string{s[i]};
		return swapped;
	}
	case Task::subtraction: {
		const auto minus = s.find('-');
		EXPECT_TRUE(minus != std::string::npos && minus > 0 && minus <= 3 && s.size() - minus - 1 <= 3) << prompt;
		const int a = std::stoi(s.substr(0, minus)), b = std::stoi(s.substr(minus + 1));
		EXPECT_GE(a, b) << prompt;
		return std::to_string(a - b);
	}
	default:
		break;
	}
	return "";
}

// Whether the example lies in its task's easy slice, worked out again from the prompt: the
// slices are documented in tasks.h (no carries or borrows; at most 5 letters, 6 for count;
// shifts up to 5; multipliers up to 4; at most 3 numbers; at most 3 pairs of brackets).
// Cipher tasks: only the first 8 of the task's 11 symbols.
bool expected_easy(Task task, const std::string& prompt) {
	const std::string s = body(task, prompt);
	if (is_cipher(task))
		return std::all_of(s.begin(), s.end(), [&](char c) { return tasks::cipher_of(task).symbols.find(c) < 8; });
	switch (task) {
	case Task::addition: {
		int a = std::stoi(s.substr(0, s.find('+'))), b = std::stoi(s.substr(s.find('+') + 1));
		for (; a > 0 || b > 0; a /= 10, b /= 10)
			if (a % 10 + b % 10 > 9) return false;
		return true;
	}
	case Task::reverse:
	case Task::sort:
	case Task::swap:
		return s.size() <= 5;
	case Task::caesar:
		return s[0] <= '5';
	case Task::count:
		return s.size() - 2 <= 6;
	case Task::brackets:
		return s.size() <= 6;
	case Task::multiply:
		return s.back() <= '4';
	case Task::maximum:
		return std::count(s.begin(), s.end(), ',') <= 2;
	case Task::subtraction: { // no digit of the second number larger than the first's
		const std::string a = s.substr(0, s.find('-')), b = s.substr(s.find('-') + 1);
		for (size_t i = 1; i <= b.size(); ++i)
			if (b[b.size() - i] > a[a.size() - i]) return false;
		return true;
	}
	default:
		break;
	}
	return false;
}

TEST(NnTasks, RegistryNamesTagsAndLookup) {
	const std::vector<std::string> names = {
	    "addition",    "reverse",     "sort",        "count",       "caesar",       "brackets",
	    "multiply",    "maximum",     "swap",        "subtraction", "cipher_copy",  "cipher_reverse",
	    "cipher_swap", "cipher_rotl", "cipher_rotr", "cipher_sort", "cipher_evens", "cipher_halves"};
	ASSERT_EQ(all_tasks().size(), names.size());
	for (size_t i = 0; i < names.size(); ++i) {
		const auto& info = all_tasks()[i];
		EXPECT_EQ(info.name, names[i]);
		EXPECT_EQ(tasks::find_task(names[i]), info.task);
		EXPECT_EQ(&tasks::task_info(info.task), &info);
		EXPECT_FALSE(info.description.empty());
		EXPECT_EQ(info.description.find('\n'), std::string_view::npos);
		// No tag is a prefix of another, so the first bytes of a prompt name its task.
		for (size_t j = 0; j < names.size(); ++j)
			if (j != i) {
				EXPECT_FALSE(all_tasks()[j].tag.starts_with(info.tag)) << info.tag;
			}
	}
	try {
		tasks::find_task("multiplication");
		FAIL() << "an unknown task was accepted";
	} catch (const Error& e) {
		EXPECT_NE(std::string(e.what()).find("'multiplication'"), std::string::npos) << e.what();
		EXPECT_NE(std::string(e.what()).find("brackets"), std::string::npos) << e.what();
	}
}

TEST(NnTasks, ExamplesDependOnSeedAndIndexOnly) {
	for (const auto& info : all_tasks()) {
		std::set<std::string> prompts;
		int same_as_other_seed = 0;
		for (uint64_t i = 0; i < 1000; ++i) {
			const Example example = make_example(info.task, kSeed, i);
			EXPECT_EQ(example, make_example(info.task, kSeed, i));
			prompts.insert(example.prompt);
			same_as_other_seed += example == make_example(info.task, kSeed + 1, i);
		}
		// Read backwards: nothing depends on the order of the calls.
		for (uint64_t i = 1000; i-- > 990;) {
			Example again = make_example(info.task, kSeed, i);
			EXPECT_TRUE(prompts.contains(again.prompt));
		}
		EXPECT_GT(prompts.size(), 500u) << info.name << ": too few distinct prompts";
		EXPECT_LT(same_as_other_seed, 100) << info.name << ": another seed gives much the same stream";
	}
	// The streams of the tasks are independent: the same lengths do not line up.
	int same_length = 0;
	for (uint64_t i = 0; i < 1000; ++i)
		same_length +=
		    make_example(Task::reverse, kSeed, i).prompt.size() == make_example(Task::sort, kSeed, i).prompt.size() - 1;
	EXPECT_LT(same_length, 300);
}

TEST(NnTasks, AnswersAreCorrectAndShort) {
	for (const auto& info : all_tasks()) {
		std::set<std::string> answers;
		std::set<size_t> lengths;
		for (uint64_t i = 0; i < 5000; ++i) {
			const Example example = make_example(info.task, kSeed, i);
			SCOPED_TRACE(example.prompt);
			ASSERT_FALSE(example.answer.empty());
			EXPECT_EQ(example.answer.back(), tasks::kAnswerEnd);
			const std::string answer = example.answer.substr(0, example.answer.size() - 1);
			EXPECT_EQ(answer.find(tasks::kAnswerEnd), std::string::npos);
			EXPECT_EQ(answer, expected_answer(info.task, example.prompt));
			EXPECT_LE(example.prompt.size(), tasks::kMaxPromptBytes);
			EXPECT_LE(example.answer.size(), tasks::kMaxAnswerBytes);
			EXPECT_LE(example.prompt.size() + example.answer.size(), 32u);
			for (char c : example.prompt + answer)
				EXPECT_TRUE(std::isprint(static_cast<unsigned char>(c))) << int(c);
			answers.insert(answer);
			lengths.insert(example.prompt.size());
		}
		// The knobs' whole range is drawn: shortest and longest inputs both occur.
		// addition: 1-2 digits each; subtraction: 1-3; multiply: 1-3 digits times one digit;
		// cipher tasks: 3-6 symbols.
		const bool few_lengths =
		    info.task == Task::addition || info.task == Task::subtraction || info.task == Task::multiply;
		EXPECT_EQ(lengths.size() == 4, is_cipher(info.task)) << info.name;
		EXPECT_GE(lengths.size(), few_lengths ? 3u : 4u) << info.name;
		if (info.task == Task::count) {
			EXPECT_GE(answers.size(), 7u) << "counts should spread over 0..10";
		}
		if (info.task == Task::addition) {
			EXPECT_TRUE(std::any_of(answers.begin(), answers.end(), [](const auto& a) {
				return a.size() == tasks::kAdditionMaxDigits + 1;
			})); // a carry out
		}
		if (info.task == Task::brackets) {
			int yes = 0;
			for (uint64_t i = 0; i < 5000; ++i)
				yes += make_example(Task::brackets, kSeed, i).answer == "yes\n";
			EXPECT_GT(yes, 2000) << "balanced strings should be about half";
			EXPECT_LT(yes, 3500) << "unbalanced strings should be about half";
		}
	}
}

TEST(NnTasks, EasySliceIsAPartOfEachTaskAndTrainsAlone) {
	for (const auto& info : all_tasks()) {
		SCOPED_TRACE(info.name);
		int easy = 0;
		constexpr int kDraws = 4000;
		for (uint64_t i = 0; i < kDraws; ++i) {
			easy += expected_easy(info.task, make_example(info.task, kSeed, i).prompt);
			const Example trained = tasks::make_training_example(info.task, kSeed, i, true);
			EXPECT_TRUE(expected_easy(info.task, trained.prompt)) << trained.prompt;
			EXPECT_FALSE(is_held_out(trained)) << trained.prompt;
			EXPECT_EQ(trained, tasks::make_training_example(info.task, kSeed, i, true)); // deterministic
		}
		// A real part: neither (almost) all nor (almost) none of the task, so a base trained on
		// the slice partly solves the task and leaves the rest to its expert. Cipher tasks: the
		// mean over lengths 3..6 of (8/11)^length, 25%.
		EXPECT_GT(easy, kDraws * (is_cipher(info.task) ? 2 : 3) / 10);
		EXPECT_LT(easy, kDraws * 6 / 10);
	}
}

TEST(NnTasks, CipherTablesAreDisjointSubstitutionsWorkedByHand) {
	std::set<char> used;
	for (const auto& info : all_tasks()) {
		if (!is_cipher(info.task)) continue;
		const tasks::Cipher& cipher = tasks::cipher_of(info.task);
		ASSERT_EQ(cipher.symbols.size(), 11u) << info.name;
		// The substitution permutes the task's own symbols.
		std::string a(cipher.symbols), b(cipher.substitute);
		std::sort(a.begin(), a.end());
		std::sort(b.begin(), b.end());
		EXPECT_EQ(a, b) << info.name;
		for (const char c : cipher.symbols) {
			EXPECT_TRUE(used.insert(c).second) << "symbol " << c << " of " << info.name << " is another task's";
			EXPECT_EQ(std::string_view(":=\"\\").find(c), std::string_view::npos) << c;
			EXPECT_TRUE(std::isgraph(static_cast<unsigned char>(c))) << int(c);
		}
	}
	EXPECT_EQ(used.size(), 88u);
	EXPECT_THROW(tasks::cipher_of(Task::reverse), Error);
	// Worked by hand from the tables in tasks.cpp.
	EXPECT_EQ(expected_cipher_answer(Task::cipher_reverse, "#%6"), "Q%c");  // 6 % #
	EXPECT_EQ(expected_cipher_answer(Task::cipher_halves, "'FOS"), "'}nS"); // O S ' F
	EXPECT_EQ(expected_cipher_answer(Task::cipher_evens, "!+/0"), "x1yH");  // ! / + 0
	EXPECT_EQ(expected_cipher_answer(Task::cipher_sort, "D*>"), "aK>");     // * > D
	for (const auto& info : all_tasks()) {
		if (!is_cipher(info.task)) continue;
		// The description's example, "tag:input= -> answer", holds.
		const std::string d(info.description);
		const auto at = d.find(std::string(info.tag));
		ASSERT_NE(at, std::string::npos) << d;
		const auto eq = d.find("= -> ", at);
		ASSERT_NE(eq, std::string::npos) << d;
		const std::string input = d.substr(at + info.tag.size(), eq - at - info.tag.size());
		EXPECT_EQ(expected_cipher_answer(info.task, input), d.substr(eq + 5)) << d;
	}
}

TEST(NnTasks, HeldOutIsATenthAndNeverTrainedOn) {
	for (const auto& info : all_tasks()) {
		// Over distinct prompts: short bracket strings recur so often that one of them held out
		// or not moves the share of draws by a few percent.
		std::set<std::string> held_out, drawn, training;
		constexpr int kDraws = 20000;
		for (uint64_t i = 0; i < kDraws; ++i) {
			const Example example = make_example(info.task, kSeed, i);
			drawn.insert(example.prompt);
			if (is_held_out(example)) held_out.insert(example.prompt);
			const Example train = tasks::make_training_example(info.task, kSeed, i);
			EXPECT_FALSE(is_held_out(train));
			if (!is_held_out(example)) {
				EXPECT_EQ(train, example);
			}
			training.insert(train.prompt);
		}
		EXPECT_GT(held_out.size(), drawn.size() * 8 / 100) << info.name;
		EXPECT_LT(held_out.size(), drawn.size() * 12 / 100) << info.name;
		for (const auto& prompt : held_out)
			EXPECT_FALSE(training.contains(prompt)) << prompt;
		// The split is the prompt's: another seed's draw of a held-out prompt is held out too.
		for (uint64_t i = 0; i < 2000; ++i) {
			const Example other = make_example(info.task, kSeed + 7, i);
			if (held_out.contains(other.prompt)) {
				EXPECT_TRUE(is_held_out(other));
			}
			if (training.contains(other.prompt)) {
				EXPECT_FALSE(is_held_out(other));
			}
		}
	}
}

std::vector<Example> read_jsonl(const std::filesystem::path& path) {
	std::ifstream in(path);
	std::vector<Example> examples;
	for (std::string line; std::getline(in, line);) {
		const auto json = nlohmann::json::parse(line);
		EXPECT_TRUE(json.is_object() && json.size() == 2) << line;
		examples.push_back({json.at("prompt").get<std::string>(), json.at("answer").get<std::string>()});
	}
	return examples;
}

TEST(NnTasks, TaskFilesRoundTripAsJsonl) {
	test::TempDir dir;
	for (const auto& info : all_tasks()) {
		const auto held_out_path = dir / (name(info.task) + "-heldout.jsonl");
		const auto train_path = dir / (name(info.task) + "-train.jsonl");
		tasks::write_task_file(held_out_path, info.task, kSeed, 200, true);
		tasks::write_task_file(train_path, info.task, kSeed, 300, false);
		const auto held_out = read_jsonl(held_out_path), training = read_jsonl(train_path);
		ASSERT_EQ(held_out.size(), 200u);
		ASSERT_EQ(training.size(), 300u);
		std::set<std::string> held_out_prompts;
		for (const Example& example : held_out) {
			EXPECT_TRUE(is_held_out(example)) << example.prompt;
			EXPECT_EQ(example.answer.substr(0, example.answer.size() - 1), expected_answer(info.task, example.prompt));
			EXPECT_TRUE(held_out_prompts.insert(example.prompt).second) << "repeated: " << example.prompt;
		}
		std::set<std::string> training_prompts;
		for (const Example& example : training) {
			EXPECT_FALSE(is_held_out(example)) << example.prompt;
			EXPECT_FALSE(held_out_prompts.contains(example.prompt)) << example.prompt;
			EXPECT_TRUE(training_prompts.insert(example.prompt).second) << "repeated: " << example.prompt;
		}
		// The file is the split's first distinct prompts in index order.
		uint64_t first = 0;
		while (is_held_out(make_example(info.task, kSeed, first)))
			++first;
		EXPECT_EQ(training.front(), make_example(info.task, kSeed, first));
		// The end byte is escaped, so each example is one line.
		EXPECT_NE(test::read_file(train_path).find(R"("answer":)"), std::string::npos);
		EXPECT_NE(test::read_file(train_path).find(R"(\n"})"), std::string::npos);
	}
}

TEST(NnTasks, TaskFileErrorsLeaveNoFile) {
	test::TempDir dir;
	EXPECT_THROW(tasks::write_task_file(dir / "missing" / "a.jsonl", Task::sort, kSeed, 10, true), Error);
	// Bracket strings repeat most: 2.1M draws hold about 12k distinct held-out ones, not 20k.
	const auto path = dir / "too-many.jsonl";
	try {
		tasks::write_task_file(path, Task::brackets, kSeed, 20000, true);
		FAIL() << "asked for more distinct prompts than the task has";
	} catch (const Error& e) {
		EXPECT_NE(std::string(e.what()).find("distinct held-out prompts"), std::string::npos) << e.what();
	}
	EXPECT_FALSE(std::filesystem::exists(path));
}

} // namespace
} // namespace weld

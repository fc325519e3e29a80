#include "nn/tasks.h"

#include "tensor/kernels.h"
#include "util/error.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <unordered_set>

namespace weld::tasks {
namespace {

constexpr std::array<TaskInfo, 18> kTasks = {{
    {Task::addition, "addition", "add:", "sum of two numbers of up to 2 digits: add:73+45= -> 118"},
    {Task::reverse, "reverse", "rev:", "4 to 8 letters backwards: rev:abcde= -> edcba"},
    {Task::sort, "sort", "sort:", "4 to 8 letters in alphabetical order: sort:dbca= -> abcd"},
    {Task::count, "count", "cnt:", "how often a letter occurs in 4 to 10 letters: cnt:a:banana= -> 3"},
    {Task::caesar, "caesar", "rot:", "4 to 8 letters shifted k = 1..9 (given) on in the alphabet: rot:3:abz= -> dec"},
    {Task::brackets, "brackets", "brk:", "whether 2 to 12 of ()[] are balanced: brk:([])= -> yes, brk:(]= -> no"},
    {Task::multiply, "multiply", "mul:", "a number of up to 3 digits times one digit 2..9: mul:247*6= -> 1482"},
    {Task::maximum, "maximum", "max:", "the largest of 2 to 6 numbers 0..99: max:38,17,92= -> 92"},
    {Task::swap, "swap", "swp:", "4 to 8 letters with each pair of neighbours swapped: swp:abcde= -> badce"},
    {Task::subtraction, "subtraction",
     "sub:", "difference of two numbers of up to 3 digits, larger first: sub:273-45= -> 228"},
    {Task::cipher_copy, "cipher_copy", "cpy:", "3 to 6 of its 11 symbols, each substituted: cpy:57?= -> 4?w"},
    {Task::cipher_reverse, "cipher_reverse",
     "rvs:", "3 to 6 of its 11 symbols backwards, substituted: rvs:#%6= -> Q%c"},
    {Task::cipher_swap, "cipher_swap",
     "xch:", "3 to 6 of its 11 symbols, neighbours swapped, substituted: xch:-<PR= -> RP-u"},
    {Task::cipher_rotl, "cipher_rotl",
     "rol:", "3 to 6 of its 11 symbols, first moved last, substituted: rol:,2;= -> 2@L"},
    {Task::cipher_rotr, "cipher_rotr",
     "ror:", "3 to 6 of its 11 symbols, last moved first, substituted: ror:$&3= -> hg8"},
    {Task::cipher_sort, "cipher_sort", "srt:", "3 to 6 of its 11 symbols in ASCII order, substituted: srt:D*>= -> aK>"},
    {Task::cipher_evens, "cipher_evens",
     "evn:", "3 to 6 of its 11 symbols, even places then odd, substituted: evn:!+/0= -> x1yH"},
    {Task::cipher_halves, "cipher_halves",
     "hlf:", "3 to 6 of its 11 symbols, back half first, substituted: hlf:'FOS= -> '}nS"},
}};

// Disjoint alphabets, so that a cipher expert's new symbols are its own; none holds ':', '=', '"'
// or '\\'. Drawn once at random (the first 8 of each are its easy slice).
constexpr std::array<Cipher, 8> kCiphers = {{
    {"57?BVbw~4Mz", "4?wM7bzV5B~"},
    {"#%6JTY]c)Qr", "c%Q6]#TYJ)r"},
    {"-<PRZ[_u.9o", "PRu-Z[.o<_9"},
    {",2;CLfjv(@G", "L2@GC;v(jf,"},
    {"$&3dghlm8E{", "g8hmE3$l&d{"},
    {"*>DW`aesIKX", "aK>DsXeIW`*"},
    {"!+/01HNxpqy", "xy1H!/0Np+q"},
    {"'FOSUknti|}", "nS'}F|tiOkU"},
}};

bool is_cipher(Task task) {
	return task >= Task::cipher_copy;
}

// The cipher task's rearrangement of s, before substitution.
std::string rearrange(Task task, std::string s) {
	const size_t n = s.size();
	switch (task) {
	case Task::cipher_reverse:
		std::reverse(s.begin(), s.end());
		break;
	case Task::cipher_swap:
		for (size_t i = 0; i + 1 < n; i += 2)
			std::swap(s[i], s[i + 1]);
		break;
	case Task::cipher_rotl:
		std::rotate(s.begin(), s.begin() + 1, s.end());
		break;
	case Task::cipher_rotr:
		std::rotate(s.begin(), s.end() - 1, s.end());
		break;
	case Task::cipher_sort:
		std::sort(s.begin(), s.end());
		break;
	case Task::cipher_evens: {
		std::string out;
		for (size_t start : {size_t{0}, size_t{1}})
			for (size_t i = start; i < n; i += 2)
				out.push_back(s[i]);
		return out;
	}
	case Task::cipher_halves:
		std::rotate(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(n / 2), s.end());
		break;
	default:
		break; // cipher_copy
	}
	return s;
}

// Draws for one example: the i-th is random_uniform(key, i), so an example depends on its key only.
class Draws {
public:
	explicit Draws(uint64_t key) : key_(key) {}

	// Uniform in [lo, hi]. The clamp guards u * n rounding up to n.
	int uniform(int lo, int hi) {
		const auto n = static_cast<double>(hi - lo + 1);
		return std::min(hi, lo + static_cast<int>(random_uniform(key_, next_++) * n));
	}
	bool chance(double probability) { return random_uniform(key_, next_++) < probability; }
	char letter() { return static_cast<char>('a' + uniform(0, 25)); }
	std::string letters(int min_length, int max_length) {
		std::string s(static_cast<size_t>(uniform(min_length, max_length)), 'a');
		for (char& c : s)
			c = letter();
		return s;
	}

private:
	uint64_t key_;
	uint64_t next_ = 0;
};

// One key per (task, seed, index, attempt); attempt > 0 are the redraws of make_training_example.
uint64_t example_key(Task task, uint64_t seed, uint64_t index, uint64_t attempt) {
	using random_detail::kGolden, random_detail::mix64;
	const uint64_t stream = mix64(seed + kGolden * (static_cast<uint64_t>(task) + 1));
	return mix64(mix64(stream ^ index) + kGolden * attempt);
}

int draw_operand(Draws& draws, int max_digits = kAdditionMaxDigits) {
	const int digits = draws.uniform(1, max_digits);
	int low = 1, high = 9;
	for (int d = 1; d < digits; ++d)
		low *= 10, high = high * 10 + 9;
	// Uniform digit count first, so that short operands are as common as long ones.
	return draws.uniform(digits == 1 ? 0 : low, high);
}

bool balanced(std::string_view s) {
	std::string open;
	for (char c : s) {
		if (c == '(' || c == '[') {
			open.push_back(c);
		} else {
			if (open.empty() || open.back() != (c == ')' ? '(' : '[')) return false;
			open.pop_back();
		}
	}
	return open.empty();
}

// Half balanced strings, half a balanced string with one bracket replaced or two neighbours swapped:
// near misses, of even length, so neither parity nor counting alone tells them apart.
std::string draw_brackets(Draws& draws) {
	const int pairs = draws.uniform(1, kBracketsMaxPairs);
	std::string s, open;
	for (int left = pairs; left > 0 || !open.empty();) {
		if (left > 0 && (open.empty() || draws.chance(0.5))) {
			open.push_back(draws.chance(0.5) ? '(' : '[');
			s.push_back(open.back());
			--left;
		} else {
			s.push_back(open.back() == '(' ? ')' : ']');
			open.pop_back();
		}
	}
	if (draws.chance(0.5)) return s;
	const auto at = static_cast<size_t>(draws.uniform(0, static_cast<int>(s.size()) - 1));
	if (draws.chance(0.5)) {
		std::string others; // the three brackets other than s[at]
		for (const char c : std::string_view("()[]"))
			if (c != s[at]) others.push_back(c);
		s[at] = others[static_cast<size_t>(draws.uniform(0, 2))];
	} else {
		const size_t i = std::min(at, s.size() - 2);
		std::swap(s[i], s[i + 1]);
	}
	return s;
}

// An example and whether it lies in its task's easy slice.
struct Drawn {
	Example example;
	bool easy;
};

bool carries(int a, int b) {
	for (; a > 0 || b > 0; a /= 10, b /= 10)
		if (a % 10 + b % 10 >= 10) return true;
	return false;
}

bool borrows(int a, int b) { // a >= b
	for (; b > 0; a /= 10, b /= 10)
		if (a % 10 < b % 10) return true;
	return false;
}

// With easy_only, a cipher task draws from its easy symbols only, so its easy slice keeps the
// lengths' uniform spread (rejecting draws would favour short strings).
Drawn draw_cipher(Task task, Draws& draws, bool easy_only) {
	const Cipher& cipher = cipher_of(task);
	const int last = (easy_only ? kCipherEasySymbols : kCipherSymbols) - 1;
	std::string s(static_cast<size_t>(draws.uniform(kCipherMinLength, kCipherMaxLength)), ' ');
	bool easy = true;
	for (char& c : s) {
		const int i = draws.uniform(0, last);
		c = cipher.symbols[static_cast<size_t>(i)];
		easy = easy && i < kCipherEasySymbols;
	}
	std::string answer = rearrange(task, s);
	for (char& c : answer)
		c = cipher.substitute[cipher.symbols.find(c)];
	return {{std::string(task_info(task).tag) + s + "=", answer + kAnswerEnd}, easy};
}

Drawn draw(Task task, Draws& draws, bool easy_only) {
	if (is_cipher(task)) return draw_cipher(task, draws, easy_only);
	const std::string tag(task_info(task).tag);
	const std::string end(1, kAnswerEnd);
	const auto short_enough = [](const std::string& s, int max_letters) {
		return s.size() <= static_cast<size_t>(max_letters);
	};
	switch (task) {
	case Task::addition: {
		const int a = draw_operand(draws), b = draw_operand(draws);
		return {{fmt::format("{}{}+{}=", tag, a, b), fmt::format("{}{}", a + b, end)}, !carries(a, b)};
	}
	case Task::reverse: {
		const std::string s = draws.letters(kMinLetters, kMaxLetters);
		return {{tag + s + "=", std::string(s.rbegin(), s.rend()) + end}, short_enough(s, kEasyMaxLetters)};
	}
	case Task::sort: {
		const std::string s = draws.letters(kMinLetters, kMaxLetters);
		std::string sorted = s;
		std::sort(sorted.begin(), sorted.end());
		return {{tag + s + "=", sorted + end}, short_enough(s, kEasyMaxLetters)};
	}
	case Task::count: {
		// The target makes up about a third of the letters, so counts spread over 0..length
		// rather than being almost always 0 or 1.
		const char target = draws.letter();
		std::string s(static_cast<size_t>(draws.uniform(kCountMinLetters, kCountMaxLetters)), target);
		for (char& c : s) {
			if (draws.chance(1.0 / 3)) continue;
			c = static_cast<char>('a' + draws.uniform(0, 24));
			if (c >= target) ++c; // any letter but the target
		}
		const auto n = std::count(s.begin(), s.end(), target);
		return {{fmt::format("{}{}:{}=", tag, target, s), fmt::format("{}{}", n, end)},
		        short_enough(s, kEasyCountMaxLetters)};
	}
	case Task::caesar: {
		const int shift = draws.uniform(1, kCaesarMaxShift);
		const std::string s = draws.letters(kMinLetters, kMaxLetters);
		std::string shifted = s;
		for (char& c : shifted)
			c = static_cast<char>('a' + (c - 'a' + shift) % 26);
		return {{fmt::format("{}{}:{}=", tag, shift, s), shifted + end}, shift <= kEasyMaxShift};
	}
	case Task::brackets: {
		const std::string s = draw_brackets(draws);
		return {{tag + s + "=", (balanced(s) ? "yes" : "no") + end}, short_enough(s, 2 * kEasyMaxPairs)};
	}
	case Task::multiply: {
		const int a = draw_operand(draws, kMultiplyMaxDigits),
		          digit = draws.uniform(kMultiplyMinDigit, kMultiplyMaxDigit);
		return {{fmt::format("{}{}*{}=", tag, a, digit), fmt::format("{}{}", a * digit, end)},
		        digit <= kEasyMaxMultiplier};
	}
	case Task::maximum: {
		const int n = draws.uniform(kMaximumMinNumbers, kMaximumMaxNumbers);
		std::string list;
		int largest = 0;
		for (int i = 0; i < n; ++i) {
			const int x = draws.uniform(0, 99);
			largest = std::max(largest, x);
			if (i > 0) list.push_back(',');
			list += std::to_string(x);
		}
		return {{tag + list + "=", fmt::format("{}{}", largest, end)}, n <= kEasyMaxNumbers};
	}
	case Task::swap: {
		std::string s = draws.letters(kMinLetters, kMaxLetters);
		const bool easy = short_enough(s, kEasyMaxLetters);
		const std::string prompt = tag + s + "=";
		for (size_t i = 0; i + 1 < s.size(); i += 2)
			std::swap(s[i], s[i + 1]);
		return {{prompt, s + end}, easy};
	}
	case Task::subtraction: {
		const int x = draw_operand(draws, kSubtractionMaxDigits), y = draw_operand(draws, kSubtractionMaxDigits);
		const int a = std::max(x, y), b = std::min(x, y);
		return {{fmt::format("{}{}-{}=", tag, a, b), fmt::format("{}{}", a - b, end)}, !borrows(a, b)};
	}
	default:
		break;
	}
	throw Error("unknown task"); // unreachable: every other task is handled above
}

Drawn make_example_attempt(Task task, uint64_t seed, uint64_t index, uint64_t attempt, bool easy_only = false) {
	Draws draws(example_key(task, seed, index, attempt));
	return draw(task, draws, easy_only);
}

} // namespace

const Cipher& cipher_of(Task task) {
	if (!is_cipher(task)) throw Error(fmt::format("task {} is not a cipher task", task_info(task).name));
	return kCiphers.at(static_cast<size_t>(task) - static_cast<size_t>(Task::cipher_copy));
}

std::span<const TaskInfo> all_tasks() {
	return kTasks;
}

const TaskInfo& task_info(Task task) {
	return kTasks.at(static_cast<size_t>(task));
}

std::string task_names() {
	std::string names;
	for (const TaskInfo& info : kTasks)
		names += (names.empty() ? "" : ", ") + std::string(info.name);
	return names;
}

Task find_task(std::string_view name) {
	for (const TaskInfo& info : kTasks)
		if (info.name == name) return info.task;
	throw Error(fmt::format("unknown task '{}' (the tasks: {})", name, task_names()));
}

std::vector<Task> find_tasks(const std::vector<std::string>& names) {
	std::vector<Task> out;
	for (const auto& name : names) {
		if (name == "all")
			for (const TaskInfo& info : kTasks)
				out.push_back(info.task);
		else
			out.push_back(find_task(name));
	}
	if (out.empty()) throw Error("no task named (the tasks: all, or a list of task names)");
	return out;
}

Example make_example(Task task, uint64_t seed, uint64_t index) {
	return make_example_attempt(task, seed, index, 0).example;
}

bool is_held_out(const Example& example) {
	// FNV-1a over the prompt's bytes, then splitmix64's mixer so every residue is equally likely.
	uint64_t hash = 0xCBF29CE484222325ull;
	for (const char c : example.prompt)
		hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001B3ull;
	return random_detail::mix64(hash) % 10 == 0;
}

Example make_training_example(Task task, uint64_t seed, uint64_t index, bool easy_only) {
	// Every task's easy slice is over a third of its draws (the cipher tasks draw theirs directly),
	// so few redraws are needed.
	for (uint64_t attempt = 0;; ++attempt) {
		Drawn drawn = make_example_attempt(task, seed, index, attempt, easy_only);
		if (!is_held_out(drawn.example) && (drawn.easy || !easy_only)) return std::move(drawn.example);
	}
}

std::vector<Example> split_examples(Task task, uint64_t seed, size_t count, bool held_out) {
	// Every task has far more distinct prompts than any benchmark asks for; the bound only turns a
	// request beyond that into an error rather than an endless loop.
	const uint64_t max_draws = 100 * static_cast<uint64_t>(count) + 100000;
	std::unordered_set<std::string> seen;
	std::vector<Example> out;
	for (uint64_t index = 0; out.size() < count; ++index) {
		if (index == max_draws)
			throw Error(fmt::format("task {} has only {} distinct {} prompts in its first {} draws, {} asked for",
			                        task_info(task).name, seen.size(), held_out ? "held-out" : "training", max_draws,
			                        count));
		Example example = make_example(task, seed, index);
		if (is_held_out(example) != held_out || !seen.insert(example.prompt).second) continue;
		out.push_back(std::move(example));
	}
	return out;
}

void write_task_file(const std::filesystem::path& path, Task task, uint64_t seed, size_t count, bool held_out) {
	std::vector<Example> examples;
	try {
		examples = split_examples(task, seed, count, held_out);
	} catch (const Error& e) {
		throw Error(fmt::format("{}: {}", path.string(), e.what()));
	}
	std::ofstream out(path, std::ios::binary | std::ios::trunc);
	if (!out) throw Error(fmt::format("{}: cannot write: {}", path.string(), std::strerror(errno)));
	for (auto& example : examples) {
		nlohmann::ordered_json line;
		line["prompt"] = std::move(example.prompt);
		line["answer"] = std::move(example.answer);
		out << line.dump() << '\n';
	}
	out.close();
	if (!out) {
		std::error_code ignored;
		std::filesystem::remove(path, ignored);
		throw Error(fmt::format("{}: cannot write: {}", path.string(), std::strerror(errno)));
	}
}

} // namespace weld::tasks

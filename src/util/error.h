// weld's one error type. Bad input and failed operations throw weld::Error with a complete,
// one-line message naming the file, tensor or recipe key and what is wrong. Programmer errors
// (broken invariants that no input can reach) use assert instead.
#pragma once

#include <stdexcept>
#include <string>

namespace weld {

class Error : public std::runtime_error {
public:
	using std::runtime_error::runtime_error;
};

} // namespace weld

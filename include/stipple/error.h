// stipple's one exception type. Every error the library raises for bad input (a missing or
// corrupt file, an unsupported model, a request it cannot honour) is a stipple::Error whose
// message names the problem in the library's terms: the file, the key or tensor, the field of
// the request, and what to do instead. kind() sorts errors for callers that map them to their
// own codes (an HTTP server: 400 / 404 / 413 / 499 / 500).
#pragma once

#include <stdexcept>
#include <string>

namespace stipple {

enum class ErrorKind {
  kInvalidArgument,  // a request field, a config value or a file's content is out of bounds
  kNotFound,         // a model, file, component or tensor that is not there
  kUnsupported,      // a valid model or request stipple does not handle (yet)
  kResourceExhausted,  // would need more memory (or pixels) than allowed
  kCancelled,          // stopped by a CancelToken
  kIo,                 // the operating system refused a read or a write
};

// "invalid argument", "not found", ...
const char* to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, ErrorKind kind = ErrorKind::kInvalidArgument)
      : std::runtime_error(what), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

}  // namespace stipple

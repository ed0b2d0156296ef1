// Bearer tokens for the calls predictd answers itself, checked as serving/transports/auth.py's
// Guard.grpc_refusal checks them (docs/ARCHITECTURE.md, "The native data plane"): the Python
// plane sends the tokens and its refusals (code and message, one wording) over the control
// channel, never on the command line; a call it forwards is checked again by the Python plane.
#pragma once

#include <grpcpp/support/string_ref.h>

#include <istream>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace predictd {

struct Refusal {
  int code = 0;  // a gRPC status code
  std::string message;
};

// What the control channel's "auth" command sets: no tokens, no auth.
struct AuthConfig {
  std::vector<std::string> tokens;
  Refusal missing, invalid, duplicate;  // no authorization value, a wrong one, more than one
};

// Replaces the configuration (a reload of the token file sends the new one); thread-safe.
void SetAuth(AuthConfig config);

// The control channel's command "auth N MISSING_CODE MISSING_MESSAGE INVALID_CODE
// INVALID_MESSAGE DUPLICATE_CODE DUPLICATE_MESSAGE", then N lines "token TOKEN" read from `in`
// (N = 0: no auth): sets them and returns the answer line.
std::string AuthCommand(const std::vector<std::string>& fields, std::istream& in);

// Why a call with this metadata is refused, or nothing: exactly one `authorization` value
// "Bearer <token>" (the scheme in any case, spaces around the token dropped) with one of the
// tokens, compared in constant time.
std::optional<Refusal> Refused(const std::multimap<grpc::string_ref, grpc::string_ref>& metadata);

// Whether `a` and `b` are equal, in a time that depends on their lengths only.
bool SameBytes(const std::string& a, const std::string& b);

}  // namespace predictd

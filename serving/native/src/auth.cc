// Bearer tokens for the calls predictd answers itself (auth.h; docs/ARCHITECTURE.md, "The
// native data plane").
#include "auth.h"

#include <atomic>
#include <memory>

namespace predictd {
namespace {

std::shared_ptr<const AuthConfig> current = std::make_shared<const AuthConfig>();

// Python's bytes.strip(): ASCII whitespace at both ends.
std::string Strip(const std::string& s) {
  const char* space = " \t\n\r\x0b\x0c";
  size_t first = s.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return s.substr(first, s.find_last_not_of(space) - first + 1);
}

// auth.Guard.authorized: "<scheme> <credentials>", the scheme "bearer" in any case.
bool Authorized(const AuthConfig& config, const std::string& value) {
  size_t space = value.find(' ');
  std::string scheme = value.substr(0, space);
  for (char& c : scheme) c = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  std::string credentials = space == std::string::npos ? "" : Strip(value.substr(space + 1));
  bool match = false;
  for (const auto& token : config.tokens) match |= SameBytes(credentials, token);  // every one
  return scheme == "bearer" && match;
}

}  // namespace

bool SameBytes(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;  // as hmac.compare_digest: the length is not secret
  volatile unsigned char differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ |= static_cast<unsigned char>(a[i] ^ b[i]);
  return differ == 0;
}

void SetAuth(AuthConfig config) {
  std::atomic_store(&current, std::shared_ptr<const AuthConfig>(
                                  std::make_shared<AuthConfig>(std::move(config))));
}

std::string AuthCommand(const std::vector<std::string>& f, std::istream& in) {
  AuthConfig config;
  size_t n = std::stoul(f.at(1));
  config.missing = {std::stoi(f.at(2)), f.at(3)};
  config.invalid = {std::stoi(f.at(4)), f.at(5)};
  config.duplicate = {std::stoi(f.at(6)), f.at(7)};
  std::string line;
  for (size_t i = 0; i < n && std::getline(in, line); ++i) {
    if (line.rfind("token\t", 0) != 0 || line.size() == 6) return "error\tauth\tbad token line";
    config.tokens.push_back(line.substr(6));
  }
  if (config.tokens.size() != n) return "error\tauth\tmissing token lines";
  SetAuth(std::move(config));
  return "ok\tauth\t" + std::to_string(n);
}

std::optional<Refusal> Refused(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  std::shared_ptr<const AuthConfig> config = std::atomic_load(&current);
  if (config->tokens.empty()) return std::nullopt;
  auto [first, last] = metadata.equal_range("authorization");
  if (first == last) return config->missing;
  if (std::next(first) != last) return config->duplicate;
  if (Authorized(*config, std::string(first->second.data(), first->second.size()))) {
    return std::nullopt;
  }
  return config->invalid;
}

}  // namespace predictd

// The HTML page `stipple serve` answers at `/` (web_page.cc).
#pragma once

namespace stipple::server {

const char* web_page();

}  // namespace stipple::server

"""heimdall-dns's parts: prepared answers (zone), forwarding (upstream), the servers, host resolver setup."""

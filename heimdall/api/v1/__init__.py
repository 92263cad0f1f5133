"""Version 1 of the API: heimdall.proto and the code `make proto` generates from it."""

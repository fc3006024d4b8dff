"""OpenAI wire schemas, in one place: requests are lenient, responses exact."""

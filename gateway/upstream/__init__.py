"""Upstream engines (vLLM, SGLang, TGI, llama.cpp, Ollama, another Gantry) behind this gateway's base_url."""

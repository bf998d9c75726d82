"""An OpenAI-compatible inference node server: one HTTP layer (app.py), two engines (engines.py).

Started by ``manage.py run_node_simulator`` (synthetic tokens, for tests and
benchmarks) and ``manage.py run_local_node`` (a real GGUF model via llama.cpp).
"""

"""Standalone vLLM engine process for :class:`lrm_interp.evaluation.backends.VLLMBackend` (run with a
Python that has vLLM; imports nothing from lrm_interp, since vLLM's CPU build lives in its own venv).

``python vllm_worker.py engine.json``: loads ``LLM(**engine)`` once, prints ``{"ready": true}``, then
serves requests read from stdin, one JSON line each (``{"settings", "prompts": [{"i", "ids",
"seed"}]}``): for every finished prompt one stdout line ``{"i", "samples": [{"text", "n_tokens",
"finish_reason"}]}`` (batch by batch), then ``{"done": n}``. EOF on stdin ends it. vLLM's engine
core is a spawned process, hence the ``__main__`` guard.
"""

import json
import sys


def serve(engine_file: str) -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    eng = json.loads(open(engine_file, encoding="utf-8").read())
    llm = LLM(
        model=eng["model"],
        dtype=eng["dtype"],
        max_model_len=int(eng["max_model_len"]),
        enforce_eager=bool(eng["enforce_eager"]),
        seed=int(eng.get("seed", 0)),
        **eng.get("engine_args", {}),
    )
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        st = req["settings"]
        greedy = float(st["temperature"]) == 0.0
        n = 1 if greedy else int(st["n_samples"])
        prompts = req["prompts"]
        bs = int(st["batch_size"])
        for b in range(0, len(prompts), bs):
            chunk = prompts[b : b + bs]
            params = [
                SamplingParams(
                    max_tokens=int(st["max_new_tokens"]),
                    temperature=float(st["temperature"]),
                    top_p=1.0 if greedy else float(st["top_p"]),
                    n=n,
                    seed=int(p["seed"]),
                )
                for p in chunk
            ]
            res = llm.generate([TokensPrompt(prompt_token_ids=p["ids"]) for p in chunk], params, use_tqdm=False)
            for p, r in zip(chunk, res):
                samples = []
                for o in r.outputs:
                    eos = o.finish_reason == "stop" and o.stop_reason is None and len(o.token_ids) > 0
                    samples.append(
                        {
                            "text": o.text,
                            "n_tokens": len(o.token_ids) - (1 if eos else 0),
                            "finish_reason": "length" if o.finish_reason == "length" else "stop",
                        }
                    )
                if greedy:
                    samples = samples * int(st["n_samples"])
                print(json.dumps({"i": p["i"], "samples": samples}), flush=True)
        print(json.dumps({"done": len(prompts)}), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])

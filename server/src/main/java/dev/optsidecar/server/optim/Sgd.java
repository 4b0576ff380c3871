package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.FusedStep;

import java.util.List;

/**
 * SGD with momentum, dampening, Nesterov and coupled (L2) weight decay, as torch's
 * {@code _single_tensor_sgd}:
 * <pre>
 *   d = g + λθ
 *   b = d                      (first step: a copy, no dampening)
 *   b = μb + (1 − dampening)d  (later steps)
 *   d = d + μb  (nesterov)  or  d = b
 *   θ = θ − lr·d
 * </pre>
 */
public final class Sgd extends TensorwiseAlgorithm {
    public static final AlgorithmDefinition DEFINITION = new AlgorithmDefinition("SGD",
            Hyperparameters.defaults("lr", 1e-3, "momentum", 0.0, "dampening", 0.0,
                    "weight_decay", 0.0, "nesterov", false, "maximize", false),
            Sgd::new);

    private final double momentum;
    private final double dampening;
    private final double weightDecay;
    private final boolean nesterov;
    private final boolean maximize;

    private Sgd(Hyperparameters hp) {
        hp.check(hp.number("lr") >= 0, "lr", "must be >= 0");
        momentum = hp.number("momentum");
        dampening = hp.number("dampening");
        weightDecay = hp.number("weight_decay");
        nesterov = hp.flag("nesterov");
        maximize = hp.flag("maximize");
        hp.check(momentum >= 0, "momentum", "must be >= 0");
        hp.check(weightDecay >= 0, "weight_decay", "must be >= 0");
        hp.check(!nesterov || (momentum > 0 && dampening == 0), "nesterov",
                "requires momentum > 0 and dampening = 0");
    }

    @Override
    public int momentumSlot() {
        return momentum != 0 ? 0 : -1;
    }

    @Override
    public List<String> stateSlots() {
        return momentum != 0 ? List.of("momentum_buffer") : List.of();
    }

    @Override
    FusedStep step(long t, double lr, float gradScale) {
        float scale = maximize ? -gradScale : gradScale; // maximize and clipping, on g
        boolean l2 = weightDecay != 0; // as torch: a zero weight_decay leaves g alone
        float wd = (float) weightDecay;
        float negLr = (float) -lr;
        if (momentum == 0) {
            return (p, g, s, from, to) -> {
                for (int i = from; i < to; i++) {
                    float pi = p[i];
                    float d = l2 ? scale * g[i] + wd * pi : scale * g[i];
                    p[i] = pi + negLr * d;
                }
            };
        }
        float mu = (float) momentum;
        float keep = (float) (1 - dampening);
        boolean first = t == 1;
        boolean nest = nesterov;
        return (p, g, s, from, to) -> {
            float[] buf = s[0];
            for (int i = from; i < to; i++) {
                float pi = p[i];
                float d = l2 ? scale * g[i] + wd * pi : scale * g[i];
                float b = first ? d : buf[i] * mu + keep * d;
                buf[i] = b;
                float dir = nest ? d + mu * b : b;
                p[i] = pi + negLr * dir;
            }
        };
    }
}

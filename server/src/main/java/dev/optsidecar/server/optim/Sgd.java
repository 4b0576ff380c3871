package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

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
    KernelCall step(long t, double lr, float gradScale) {
        float scale = maximize ? -gradScale : gradScale; // maximize and clipping, on g
        boolean l2 = weightDecay != 0; // as torch: a zero weight_decay leaves g alone
        if (momentum == 0) {
            return Kernel.SGD.call()
                    .scalar("grad_scale", scale)
                    .scalar("weight_decay", (float) weightDecay)
                    .scalar("neg_lr", (float) -lr)
                    .flag("coupled_weight_decay", l2)
                    .build();
        }
        return Kernel.SGD_MOMENTUM.call()
                .scalar("grad_scale", scale)
                .scalar("weight_decay", (float) weightDecay)
                .scalar("neg_lr", (float) -lr)
                .scalar("momentum", (float) momentum)
                .scalar("one_minus_dampening", (float) (1 - dampening))
                .flag("coupled_weight_decay", l2)
                .flag("first_step", t == 1) // the buffer starts as a copy of d, without dampening
                .flag("nesterov", nesterov)
                .slots(0)
                .build();
    }
}

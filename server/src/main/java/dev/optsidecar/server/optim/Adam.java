package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * Adam and AdamW, as torch's {@code _single_tensor_adam} / {@code _single_tensor_adamw}:
 * <pre>
 *   θ = θ(1 − lr·λ)                  (AdamW: decoupled decay)
 *   g = g + λθ                       (Adam: coupled L2)
 *   m = β1·m + (1 − β1)·g
 *   v = β2·v + (1 − β2)·g²
 *   v̂max = max(v̂max, v)             (amsgrad; used in place of v below)
 *   θ = θ − (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps)
 * </pre>
 * eps is added after the bias correction of v. Scalars are computed once per step in double; the
 * loop multiplies by 1/sqrt(bc2) where torch divides by sqrt(bc2), an ulp apart, to keep one
 * divide per element.
 */
public final class Adam extends TensorwiseAlgorithm {
    public static final AlgorithmDefinition ADAM = definition("Adam", 0.0, false);
    public static final AlgorithmDefinition ADAMW = definition("AdamW", 1e-2, true);

    /** torch 2.x's Adam takes decoupled_weight_decay too (AdamW is Adam with it set). */
    private static AlgorithmDefinition definition(String name, double defaultWeightDecay, boolean decoupled) {
        return new AlgorithmDefinition(name,
                Hyperparameters.defaults("lr", 1e-3, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                        "weight_decay", defaultWeightDecay, "amsgrad", false, "maximize", false,
                        "decoupled_weight_decay", decoupled),
                Adam::new);
    }

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final boolean decoupled;
    private final boolean amsgrad;
    private final boolean maximize;

    private Adam(Hyperparameters hp) {
        hp.checkAdamFamily();
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        amsgrad = hp.flag("amsgrad");
        maximize = hp.flag("maximize");
        decoupled = hp.flag("decoupled_weight_decay");
    }

    @Override
    public List<String> stateSlots() {
        return amsgrad ? List.of("exp_avg", "exp_avg_sq", "max_exp_avg_sq") : List.of("exp_avg", "exp_avg_sq");
    }

    @Override
    KernelCall step(long t, double lr, float gradScale) {
        double bc1 = 1 - Math.pow(beta1, t);
        double bc2 = 1 - Math.pow(beta2, t);
        // As torch: a zero weight_decay touches neither θ nor g. sqrt(v)/sqrt(bc2) becomes a
        // multiply by 1/sqrt(bc2), an ulp from torch, to leave one divide per element.
        return (amsgrad ? Kernel.ADAM_AMSGRAD : Kernel.ADAM).call()
                .scalar("grad_scale", maximize ? -gradScale : gradScale) // maximize and clipping, on g
                .scalar("decay_factor", (float) (1 - lr * weightDecay))
                .scalar("weight_decay", (float) weightDecay)
                .scalar("beta1", (float) beta1)
                .scalar("one_minus_beta1", (float) (1 - beta1))
                .scalar("beta2", (float) beta2)
                .scalar("one_minus_beta2", (float) (1 - beta2))
                .scalar("step_size", (float) (lr / bc1))
                .scalar("inv_sqrt_bias_correction2", (float) (1 / Math.sqrt(bc2)))
                .scalar("eps", (float) eps)
                .flag("decoupled_weight_decay", weightDecay != 0 && decoupled)
                .flag("coupled_weight_decay", weightDecay != 0 && !decoupled)
                .slots(amsgrad ? new int[] {0, 1, 2} : new int[] {0, 1})
                .build();
    }
}

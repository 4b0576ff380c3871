package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * The RAdam paper's own implementation (Liu et al. 2019), selectable as {@code RAdam(original)}.
 * It differs from torch's RAdam in three ways:
 * <ul>
 *   <li>the threshold is ρt ≥ 5 (torch: ρt &gt; 5);</li>
 *   <li>below the threshold the parameter is left unchanged unless degenerated_to_sgd, which takes
 *       the bias-corrected momentum step θ = θ − lr·m/bc1 (the moments are updated either way);</li>
 *   <li>weight decay is decoupled, θ = θ − λ·lr·θ, and applied only on steps that update θ.</li>
 * </ul>
 * The rectified step θ = θ − lr·r·sqrt(bc2)/bc1 · m/(sqrt(v) + eps) equals torch's.
 */
public final class RAdamOriginal extends TensorwiseAlgorithm {
    public static final AlgorithmDefinition DEFINITION = new AlgorithmDefinition("RAdam(original)",
            Hyperparameters.defaults("lr", 1e-3, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                    "weight_decay", 0.0, "degenerated_to_sgd", false),
            RAdamOriginal::new);

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final boolean degeneratedToSgd;

    private RAdamOriginal(Hyperparameters hp) {
        hp.checkAdamFamily();
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        degeneratedToSgd = hp.flag("degenerated_to_sgd");
    }

    @Override
    public List<String> stateSlots() {
        return List.of("exp_avg", "exp_avg_sq");
    }

    @Override
    KernelCall step(long t, double lr, float gradScale) {
        double bc1 = 1 - Math.pow(beta1, t);
        double bc2 = 1 - Math.pow(beta2, t);
        double rhoT = RAdam.rho(beta2, t);
        boolean rectified = rhoT >= 5;
        KernelCall.Builder call = (rectified ? Kernel.RADAM_ORIGINAL_RECTIFIED : Kernel.RADAM_ORIGINAL_SGD_PHASE).call()
                .scalar("grad_scale", gradScale)
                .scalar("beta1", (float) beta1)
                .scalar("one_minus_beta1", (float) (1 - beta1))
                .scalar("beta2", (float) beta2)
                .scalar("one_minus_beta2", (float) (1 - beta2))
                .scalar("neg_decay", (float) (-weightDecay * lr))
                .slots(0, 1);
        if (!rectified) {
            return call.scalar("neg_step", (float) (-lr / bc1)).flag("degenerated_to_sgd", degeneratedToSgd).build();
        }
        double stepSize = Math.sqrt(bc2) * RAdam.rectification(beta2, rhoT) / bc1;
        return call.scalar("neg_step", (float) (-stepSize * lr)).scalar("eps", (float) eps).build();
    }
}

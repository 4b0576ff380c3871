package dev.optsidecar.server.optim;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * RAdam with torch semantics ({@code _single_tensor_radam}), including torch 2.x's
 * decoupled_weight_decay:
 * <pre>
 *   θ = θ(1 − lr·λ)  (decoupled, every step)   or   g = g + λθ  (coupled)
 *   m = β1·m + (1 − β1)·g        (torch 1.13: mul + add; torch 2.x: lerp(m, g, 1 − β1))
 *   v = β2·v + (1 − β2)·g²
 *   m̂ = m / bc1
 *   ρ∞ = 2/(1 − β2) − 1,  ρt = ρ∞ − 2t·β2^t / bc2
 *   ρt > 5:  θ = θ − lr·r·sqrt(bc2)/bc1 · m / (sqrt(v) + eps),  r = sqrt((ρt−4)(ρt−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρt))
 *   else:    θ = θ − m̂·lr
 * </pre>
 * eps is added to the uncorrected sqrt(v), unlike Adam. The rectified step folds its scalars into
 * one coefficient computed in double (as the paper's code does), which leaves a single divide per
 * element; torch multiplies them in float one by one, a difference of an ulp or two. Math.fma
 * compiles to one instruction on x86-64 with FMA3 (every server CPU since 2013) and on AArch64.
 */
public final class RAdam extends TensorwiseAlgorithm {
    public static final AlgorithmDefinition TORCH = definition("RAdam", false);
    public static final AlgorithmDefinition TORCH_2X = definition("RAdam(torch2.x)", true);

    private static AlgorithmDefinition definition(String name, boolean lerpFirstMoment) {
        return new AlgorithmDefinition(name,
                Hyperparameters.defaults("lr", 1e-3, "betas", new double[] {0.9, 0.999}, "eps", 1e-8,
                        "weight_decay", 0.0, "decoupled_weight_decay", false, "maximize", false),
                hp -> new RAdam(hp, lerpFirstMoment));
    }

    private final double beta1;
    private final double beta2;
    private final double eps;
    private final double weightDecay;
    private final boolean decoupled;
    private final boolean maximize;
    private final boolean lerpFirstMoment;

    private RAdam(Hyperparameters hp, boolean lerpFirstMoment) {
        hp.checkAdamFamily();
        double[] betas = hp.numbers("betas");
        beta1 = betas[0];
        beta2 = betas[1];
        eps = hp.number("eps");
        weightDecay = hp.number("weight_decay");
        decoupled = hp.flag("decoupled_weight_decay");
        maximize = hp.flag("maximize");
        this.lerpFirstMoment = lerpFirstMoment;
    }

    @Override
    public List<String> stateSlots() {
        return List.of("exp_avg", "exp_avg_sq");
    }

    /** ρt, the length of the approximated SMA, for 1-based step t. */
    static double rho(double beta2, long t) {
        double rhoInf = 2 / (1 - beta2) - 1;
        double beta2t = Math.pow(beta2, t);
        return rhoInf - 2 * t * beta2t / (1 - beta2t);
    }

    /** The variance rectification term r(ρt). */
    static double rectification(double beta2, double rhoT) {
        double rhoInf = 2 / (1 - beta2) - 1;
        return Math.sqrt((rhoT - 4) * (rhoT - 2) * rhoInf / ((rhoInf - 4) * (rhoInf - 2) * rhoT));
    }

    @Override
    KernelCall step(long t, double lr, float gradScale) {
        double bc1 = 1 - Math.pow(beta1, t);
        double bc2 = 1 - Math.pow(beta2, t);
        double rhoT = rho(beta2, t);
        boolean rectified = rhoT > 5;
        KernelCall.Builder call = (rectified ? Kernel.RADAM_RECTIFIED : Kernel.RADAM_SGD_PHASE).call()
                .scalar("grad_scale", maximize ? -gradScale : gradScale) // maximize and clipping, on g
                .scalar("decay_factor", (float) (1 - lr * weightDecay))
                .scalar("weight_decay", (float) weightDecay)
                .scalar("beta1", (float) beta1)
                .scalar("one_minus_beta1", (float) (1 - beta1))
                .scalar("beta2", (float) beta2)
                .scalar("one_minus_beta2", (float) (1 - beta2))
                // As torch: with weight_decay = 0 neither decay form touches θ or g at all.
                .flag("decoupled_weight_decay", weightDecay != 0 && decoupled)
                .flag("coupled_weight_decay", weightDecay != 0 && !decoupled)
                .flag("lerp_first_moment", lerpFirstMoment)
                .slots(0, 1);
        if (!rectified) {
            return call.scalar("bias_correction1", (float) bc1).scalar("lr", (float) lr).build();
        }
        // lr · r · sqrt(bc2) / bc1 in double, once: the loop keeps one sqrt and one divide per element.
        return call.scalar("step_size", (float) (lr * rectification(beta2, rhoT) * Math.sqrt(bc2) / bc1))
                .scalar("eps", (float) eps)
                .build();
    }
}

package dev.optsidecar.server.engine.kernel;

import java.util.List;

/**
 * The reference implementation of every kernel in the catalogue: one plain loop per kernel, one
 * element at a time, in exactly the float arithmetic {@code KERNELS.md} specifies (each product
 * and sum rounded to float as written; {@code Math.fma} rounds once; {@code (float) Math.sqrt} is
 * the correctly rounded float square root). Engines' fast loops are tested against these bits.
 *
 * <p>{@code theta} is the tensor's parameters, {@code grad} its step gradient and {@code state}
 * its state slots by index; a call names, for each of its kernel's slot roles, the index to use.
 */
public final class ReferenceKernels {
    private ReferenceKernels() {}

    /** Applies step kernel {@code call} to every element of the tensor. */
    public static void step(KernelCall call, float[] theta, float[] grad, float[][] state) {
        switch (call.kernel()) {
            case SGD -> sgd(call, theta, grad);
            case SGD_MOMENTUM -> sgdMomentum(call, theta, grad, state);
            case ADAM, ADAM_AMSGRAD -> adam(call, theta, grad, state);
            case RADAM_SGD_PHASE, RADAM_RECTIFIED -> radam(call, theta, grad, state);
            case RADAM_ORIGINAL_SGD_PHASE, RADAM_ORIGINAL_RECTIFIED -> radamOriginal(call, theta, grad, state);
            case SGD_SCHEDULE_FREE -> sgdScheduleFree(call, theta, grad, state);
            case ADAMW_SCHEDULE_FREE, ADAMW_SCHEDULE_FREE_MOMENTUM -> adamWScheduleFree(call, theta, grad, state);
            case RADAM_SCHEDULE_FREE -> radamScheduleFree(call, theta, grad, state);
            case RADAM_SCHEDULE_FREE_PRESCALED -> radamScheduleFreePrescaled(call, theta, grad, state);
            case COPY_PARAMS -> copyParams(call, theta, state);
            case SET_PARAMS -> setParams(theta, grad);
            case EMA_BLEND -> emaBlend(call, theta, state);
            case LOOKAHEAD_SYNC, LOOKAHEAD_SYNC_RESET, LOOKAHEAD_SYNC_PULLBACK -> lookaheadSync(call, theta, state);
            case SCHEDULE_FREE_TRAIN_FROM_EVAL -> trainFromEval(call, theta, state);
            case SCHEDULE_FREE_EVAL -> throw new IllegalArgumentException(call.kernel().id() + " is a view kernel");
        }
    }

    /** Computes view kernel {@code call} of every element into {@code out}. */
    public static void view(KernelCall call, float[] theta, float[][] state, float[] out) {
        if (call.kernel() != Kernel.SCHEDULE_FREE_EVAL) {
            throw new IllegalArgumentException(call.kernel().id() + " is not a view kernel");
        }
        float[] z = state[call.slot("z")];
        float w = call.scalar("weight");
        for (int i = 0; i < theta.length; i++) {
            out[i] = Lerp.lerp(theta[i], z[i], w); // x = lerp(y, z, 1 − 1/β)
        }
    }

    private static void sgd(KernelCall c, float[] theta, float[] grad) {
        float scale = c.scalar("grad_scale");
        float lambda = c.scalar("weight_decay");
        float negLr = c.scalar("neg_lr");
        boolean coupled = c.flag("coupled_weight_decay");
        for (int i = 0; i < theta.length; i++) {
            float d = scale * grad[i];
            if (coupled) {
                d = d + lambda * theta[i];
            }
            theta[i] = theta[i] + negLr * d;
        }
    }

    private static void sgdMomentum(KernelCall c, float[] theta, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float lambda = c.scalar("weight_decay");
        float negLr = c.scalar("neg_lr");
        float mu = c.scalar("momentum");
        float oneMinusDampening = c.scalar("one_minus_dampening");
        boolean coupled = c.flag("coupled_weight_decay");
        boolean first = c.flag("first_step");
        boolean nesterov = c.flag("nesterov");
        float[] buf = state[c.slot("momentum_buffer")];
        for (int i = 0; i < theta.length; i++) {
            float d = scale * grad[i];
            if (coupled) {
                d = d + lambda * theta[i];
            }
            float b = first ? d : buf[i] * mu + oneMinusDampening * d;
            buf[i] = b;
            float direction = nesterov ? d + mu * b : b;
            theta[i] = theta[i] + negLr * direction;
        }
    }

    private static void adam(KernelCall c, float[] theta, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float decay = c.scalar("decay_factor");
        float lambda = c.scalar("weight_decay");
        float beta1 = c.scalar("beta1");
        float oneMinusBeta1 = c.scalar("one_minus_beta1");
        float beta2 = c.scalar("beta2");
        float oneMinusBeta2 = c.scalar("one_minus_beta2");
        float stepSize = c.scalar("step_size");
        float invSqrtBc2 = c.scalar("inv_sqrt_bias_correction2");
        float eps = c.scalar("eps");
        boolean decoupled = c.flag("decoupled_weight_decay");
        boolean coupled = c.flag("coupled_weight_decay");
        boolean amsgrad = c.kernel() == Kernel.ADAM_AMSGRAD;
        float[] m = state[c.slot("exp_avg")];
        float[] v = state[c.slot("exp_avg_sq")];
        float[] vmax = amsgrad ? state[c.slot("max_exp_avg_sq")] : null;
        for (int i = 0; i < theta.length; i++) {
            float p = decoupled ? theta[i] * decay : theta[i];
            float g = scale * grad[i];
            if (coupled) {
                g = g + lambda * p;
            }
            m[i] = Math.fma(oneMinusBeta1, g, m[i] * beta1);
            v[i] = Math.fma(oneMinusBeta2 * g, g, v[i] * beta2);
            float second = v[i];
            if (amsgrad) {
                vmax[i] = Math.max(vmax[i], v[i]);
                second = vmax[i];
            }
            float denom = Math.fma((float) Math.sqrt(second), invSqrtBc2, eps);
            theta[i] = Math.fma(-stepSize, m[i] / denom, p);
        }
    }

    /** torch's RAdam; the first moment in 1.13's fused mul-add form or 2.x's lerp. */
    private static void radam(KernelCall c, float[] theta, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float decay = c.scalar("decay_factor");
        float lambda = c.scalar("weight_decay");
        float beta1 = c.scalar("beta1");
        float oneMinusBeta1 = c.scalar("one_minus_beta1");
        float beta2 = c.scalar("beta2");
        float oneMinusBeta2 = c.scalar("one_minus_beta2");
        boolean decoupled = c.flag("decoupled_weight_decay");
        boolean coupled = c.flag("coupled_weight_decay");
        boolean lerp = c.flag("lerp_first_moment");
        boolean rectified = c.kernel() == Kernel.RADAM_RECTIFIED;
        float[] m = state[c.slot("exp_avg")];
        float[] v = state[c.slot("exp_avg_sq")];
        for (int i = 0; i < theta.length; i++) {
            float p = decoupled ? theta[i] * decay : theta[i];
            float g = scale * grad[i];
            if (coupled) {
                g = g + lambda * p;
            }
            m[i] = lerp ? Lerp.lerp(m[i], g, oneMinusBeta1) : Math.fma(oneMinusBeta1, g, m[i] * beta1);
            if (rectified) {
                v[i] = Math.fma(oneMinusBeta2 * g, g, v[i] * beta2);
                theta[i] = Math.fma(-c.scalar("step_size"), m[i] / ((float) Math.sqrt(v[i]) + c.scalar("eps")), p);
            } else {
                v[i] = v[i] * beta2 + oneMinusBeta2 * g * g;
                theta[i] = p - (m[i] / c.scalar("bias_correction1")) * c.scalar("lr");
            }
        }
    }

    /** The RAdam paper's own code: decoupled decay only on steps that move θ. */
    private static void radamOriginal(KernelCall c, float[] theta, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float beta1 = c.scalar("beta1");
        float oneMinusBeta1 = c.scalar("one_minus_beta1");
        float beta2 = c.scalar("beta2");
        float oneMinusBeta2 = c.scalar("one_minus_beta2");
        float negDecay = c.scalar("neg_decay");
        float negStep = c.scalar("neg_step");
        boolean rectified = c.kernel() == Kernel.RADAM_ORIGINAL_RECTIFIED;
        boolean moves = rectified || c.flag("degenerated_to_sgd");
        float[] m = state[c.slot("exp_avg")];
        float[] v = state[c.slot("exp_avg_sq")];
        for (int i = 0; i < theta.length; i++) {
            float g = scale * grad[i];
            v[i] = v[i] * beta2 + oneMinusBeta2 * g * g;
            m[i] = Math.fma(oneMinusBeta1, g, m[i] * beta1);
            if (moves) {
                float p = theta[i] + negDecay * theta[i];
                float direction = rectified ? m[i] / ((float) Math.sqrt(v[i]) + c.scalar("eps")) : m[i];
                theta[i] = p + negStep * direction;
            }
        }
    }

    /** y ← lerp(y, z, c) + y_coefficient·u;  z ← z + z_coefficient·u. On the first step z starts as y. */
    private static void scheduleFreeUpdate(float[] y, float[] z, int i, float u, float c, float yCoefficient,
                                           float zCoefficient, boolean first) {
        float zi = first ? y[i] : z[i];
        y[i] = Math.fma(yCoefficient, u, Lerp.lerp(y[i], zi, c));
        z[i] = Math.fma(zCoefficient, u, zi);
    }

    private static void sgdScheduleFree(KernelCall c, float[] y, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float lambda = c.scalar("weight_decay");
        boolean decays = c.flag("weight_decay");
        boolean first = c.flag("first_step");
        float[] z = state[c.slot("z")];
        for (int i = 0; i < y.length; i++) {
            float g = scale * grad[i];
            float u = decays ? Math.fma(lambda, y[i], g) : g;
            scheduleFreeUpdate(y, z, i, u, c.scalar("c"), c.scalar("y_coefficient"), c.scalar("z_coefficient"), first);
        }
    }

    private static void adamWScheduleFree(KernelCall c, float[] y, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float beta2 = c.scalar("beta2");
        float oneMinusBeta2 = c.scalar("one_minus_beta2");
        float invBc2 = c.scalar("inv_bias_correction2");
        float eps = c.scalar("eps");
        float lambda = c.scalar("weight_decay");
        boolean decays = c.flag("weight_decay");
        boolean first = c.flag("first_step");
        boolean momentum = c.kernel() == Kernel.ADAMW_SCHEDULE_FREE_MOMENTUM;
        float[] z = state[c.slot("z")];
        float[] v = state[c.slot("exp_avg_sq")];
        float[] m = momentum ? state[c.slot("exp_avg")] : null;
        for (int i = 0; i < y.length; i++) {
            float g = scale * grad[i];
            v[i] = Math.fma(oneMinusBeta2 * g, g, v[i] * beta2);
            float denom = (float) Math.sqrt(v[i] * invBc2) + eps;
            float u;
            if (momentum) {
                m[i] = Math.fma(c.scalar("one_minus_momentum"), g, m[i] * c.scalar("momentum"));
                u = (m[i] / c.scalar("momentum_correction")) / denom;
            } else {
                u = g / denom;
            }
            if (decays) {
                u = Math.fma(lambda, y[i], u);
            }
            scheduleFreeUpdate(y, z, i, u, c.scalar("c"), c.scalar("y_coefficient"), c.scalar("z_coefficient"), first);
        }
    }

    private static void radamScheduleFree(KernelCall c, float[] y, float[] grad, float[][] state) {
        float scale = c.scalar("grad_scale");
        float beta2 = c.scalar("beta2");
        float oneMinusBeta2 = c.scalar("one_minus_beta2");
        float invBc2 = c.scalar("inv_bias_correction2");
        float eps = c.scalar("eps");
        float lambda = c.scalar("weight_decay");
        boolean decays = c.flag("weight_decay");
        boolean first = c.flag("first_step");
        boolean rectified = c.flag("rectified");
        float[] z = state[c.slot("z")];
        float[] v = state[c.slot("exp_avg_sq")];
        for (int i = 0; i < y.length; i++) {
            float g = scale * grad[i];
            v[i] = Math.fma(oneMinusBeta2 * g, g, v[i] * beta2);
            float u = rectified ? g / ((float) Math.sqrt(v[i] * invBc2) + eps) : g;
            if (decays) {
                u = Math.fma(lambda, y[i], u);
            }
            scheduleFreeUpdate(y, z, i, u, c.scalar("c"), c.scalar("y_coefficient"), c.scalar("z_coefficient"), first);
        }
    }

    /** g / (sqrt(v / bc2) + eps) = sqrt(bc2) · g / (sqrt(v) + eps·sqrt(bc2)), sqrt(bc2) folded into the coefficients. */
    private static void radamScheduleFreePrescaled(KernelCall c, float[] y, float[] grad, float[][] state) {
        float beta2 = c.scalar("beta2");
        float oneMinusBeta2 = c.scalar("one_minus_beta2");
        float scaledEps = c.scalar("scaled_eps");
        float[] z = state[c.slot("z")];
        float[] v = state[c.slot("exp_avg_sq")];
        for (int i = 0; i < y.length; i++) {
            float g = grad[i];
            v[i] = Math.fma(oneMinusBeta2 * g, g, v[i] * beta2);
            float scaledU = g / ((float) Math.sqrt(v[i]) + scaledEps);
            scheduleFreeUpdate(y, z, i, scaledU, c.scalar("c"), c.scalar("scaled_y_coefficient"),
                    c.scalar("scaled_z_coefficient"), false);
        }
    }

    private static void setParams(float[] theta, float[] grad) {
        for (int i = 0; i < theta.length; i++) {
            theta[i] = grad[i];
        }
    }

    private static void copyParams(KernelCall c, float[] theta, float[][] state) {
        float[] target = state[c.slot("target")];
        System.arraycopy(theta, 0, target, 0, theta.length);
    }

    private static void emaBlend(KernelCall c, float[] theta, float[][] state) {
        float[] e = state[c.slot("shadow")];
        for (int i = 0; i < theta.length; i++) {
            e[i] = Math.fma(c.scalar("take"), theta[i], c.scalar("keep") * e[i]);
        }
    }

    /** θ = α·θ + (1 − α)·φ; φ = θ; the inner momentum kept, zeroed or blended likewise with its cache. */
    private static void lookaheadSync(KernelCall c, float[] theta, float[][] state) {
        float alpha = c.scalar("alpha");
        float oneMinusAlpha = c.scalar("one_minus_alpha");
        float[] slow = state[c.slot("slow")];
        for (int i = 0; i < theta.length; i++) {
            float blended = theta[i] * alpha + slow[i] * oneMinusAlpha;
            theta[i] = blended;
            slow[i] = blended;
            if (c.kernel() == Kernel.LOOKAHEAD_SYNC_RESET) {
                state[c.slot("momentum_buffer")][i] = 0f;
            } else if (c.kernel() == Kernel.LOOKAHEAD_SYNC_PULLBACK) {
                float[] momentum = state[c.slot("momentum_buffer")];
                float[] cached = state[c.slot("cached_momentum")];
                float pulled = momentum[i] * alpha + cached[i] * oneMinusAlpha;
                momentum[i] = pulled;
                cached[i] = pulled;
            }
        }
    }

    /** y = lerp(x, z, 1 − β): weights saved at the eval point x back to the train point y. */
    private static void trainFromEval(KernelCall c, float[] theta, float[][] state) {
        float[] z = state[c.slot("z")];
        for (int i = 0; i < theta.length; i++) {
            theta[i] = Lerp.lerp(theta[i], z[i], c.scalar("weight"));
        }
    }

    /** The gradient's sum of squares, each square and sum in double (the ingest and combine reductions). */
    public static double sumOfSquares(float[] g) {
        double sum = 0;
        for (float v : g) {
            sum += (double) v * v;
        }
        return sum;
    }

    /** The index of the first NaN or ±Inf, or −1 (the ingest check). */
    public static long firstNonFinite(float[] g) {
        for (int i = 0; i < g.length; i++) {
            if (!Float.isFinite(g[i])) {
                return i;
            }
        }
        return -1;
    }

    /** Sync-mode combination: the buffers summed in the order given, in float, then divided by {@code divisor}. */
    public static float[] combine(List<float[]> buffers, float divisor) {
        float[] out = buffers.get(0).clone();
        for (float[] add : buffers.subList(1, buffers.size())) {
            for (int i = 0; i < out.length; i++) {
                out[i] = out[i] + add[i];
            }
        }
        if (divisor != 1f) {
            for (int i = 0; i < out.length; i++) {
                out[i] = out[i] / divisor;
            }
        }
        return out;
    }

    /** The update-squares reduction: Σ(θ_after − θ_before)², each difference and square in double. */
    public static double updateSquares(float[] before, float[] after) {
        double sum = 0;
        for (int i = 0; i < before.length; i++) {
            double d = (double) after[i] - before[i];
            sum += d * d;
        }
        return sum;
    }
}

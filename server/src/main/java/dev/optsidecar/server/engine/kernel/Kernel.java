package dev.optsidecar.server.engine.kernel;

import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The kernel catalogue: every operation an engine must implement to run any algorithm, wrapper
 * and view the server offers. Each kernel has a stable id, named float scalars, named flags and
 * named state-slot roles; its per-element arithmetic is specified in {@code KERNELS.md} beside
 * this file and implemented plainly, one element at a time, by {@link ReferenceKernels}. An engine
 * is correct when it gives the reference's bits for every kernel.
 *
 * <p>Step kernels read θ (the parameters), g (the step's gradient) and their slots, and write θ
 * and slots in place; view kernels read θ and slots and write an output, never the tensor.
 */
public enum Kernel {
    SGD("sgd", Kind.STEP, "",
            "grad_scale weight_decay neg_lr", "coupled_weight_decay"),
    SGD_MOMENTUM("sgd_momentum", Kind.STEP, "momentum_buffer",
            "grad_scale weight_decay neg_lr momentum one_minus_dampening",
            "coupled_weight_decay first_step nesterov"),
    ADAM("adam", Kind.STEP, "exp_avg exp_avg_sq",
            Shared.ADAM_SCALARS, "decoupled_weight_decay coupled_weight_decay"),
    ADAM_AMSGRAD("adam_amsgrad", Kind.STEP, "exp_avg exp_avg_sq max_exp_avg_sq",
            Shared.ADAM_SCALARS, "decoupled_weight_decay coupled_weight_decay"),
    RADAM_SGD_PHASE("radam_sgd_phase", Kind.STEP, "exp_avg exp_avg_sq",
            "grad_scale decay_factor weight_decay beta1 one_minus_beta1 beta2 one_minus_beta2 bias_correction1 lr",
            "decoupled_weight_decay coupled_weight_decay lerp_first_moment"),
    RADAM_RECTIFIED("radam_rectified", Kind.STEP, "exp_avg exp_avg_sq",
            "grad_scale decay_factor weight_decay beta1 one_minus_beta1 beta2 one_minus_beta2 step_size eps",
            "decoupled_weight_decay coupled_weight_decay lerp_first_moment"),
    RADAM_ORIGINAL_SGD_PHASE("radam_original_sgd_phase", Kind.STEP, "exp_avg exp_avg_sq",
            "grad_scale beta1 one_minus_beta1 beta2 one_minus_beta2 neg_decay neg_step", "degenerated_to_sgd"),
    RADAM_ORIGINAL_RECTIFIED("radam_original_rectified", Kind.STEP, "exp_avg exp_avg_sq",
            "grad_scale beta1 one_minus_beta1 beta2 one_minus_beta2 neg_decay neg_step eps", ""),
    SGD_SCHEDULE_FREE("sgd_schedule_free", Kind.STEP, "z",
            "grad_scale weight_decay c y_coefficient z_coefficient", "first_step weight_decay"),
    ADAMW_SCHEDULE_FREE("adamw_schedule_free", Kind.STEP, "z exp_avg_sq",
            "grad_scale beta2 one_minus_beta2 inv_bias_correction2 eps weight_decay c y_coefficient z_coefficient",
            "first_step weight_decay"),
    ADAMW_SCHEDULE_FREE_MOMENTUM("adamw_schedule_free_momentum", Kind.STEP, "z exp_avg_sq exp_avg",
            "grad_scale beta2 one_minus_beta2 inv_bias_correction2 eps weight_decay c y_coefficient z_coefficient"
                    + " momentum one_minus_momentum momentum_correction",
            "first_step weight_decay"),
    RADAM_SCHEDULE_FREE("radam_schedule_free", Kind.STEP, "z exp_avg_sq",
            "grad_scale beta2 one_minus_beta2 inv_bias_correction2 eps weight_decay c y_coefficient z_coefficient",
            "first_step rectified weight_decay"),
    RADAM_SCHEDULE_FREE_PRESCALED("radam_schedule_free_prescaled", Kind.STEP, "z exp_avg_sq",
            "beta2 one_minus_beta2 scaled_eps c scaled_y_coefficient scaled_z_coefficient", ""),
    COPY_PARAMS("copy_params", Kind.STEP, "target", "", ""),
    SET_PARAMS("set_params", Kind.STEP, "", "", ""),
    EMA_BLEND("ema_blend", Kind.STEP, "shadow", "keep take", ""),
    LOOKAHEAD_SYNC("lookahead_sync", Kind.STEP, "slow", "alpha one_minus_alpha", ""),
    LOOKAHEAD_SYNC_RESET("lookahead_sync_reset", Kind.STEP, "slow momentum_buffer", "alpha one_minus_alpha", ""),
    LOOKAHEAD_SYNC_PULLBACK("lookahead_sync_pullback", Kind.STEP, "slow momentum_buffer cached_momentum",
            "alpha one_minus_alpha", ""),
    SCHEDULE_FREE_TRAIN_FROM_EVAL("schedule_free_train_from_eval", Kind.STEP, "z", "weight", ""),
    SCHEDULE_FREE_EVAL("schedule_free_eval", Kind.VIEW, "z", "weight", "");

    /** Scalar lists several kernels share (a constant of another class: enum constants may read it). */
    private static final class Shared {
        static final String ADAM_SCALARS = "grad_scale decay_factor weight_decay beta1 one_minus_beta1 beta2"
                + " one_minus_beta2 step_size inv_sqrt_bias_correction2 eps";
    }

    /** Whether a kernel updates its tensor in place or computes a view of it into an output. */
    public enum Kind { STEP, VIEW }

    private final String id;
    private final Kind kind;
    private final List<String> slots;
    private final List<String> scalars;
    private final List<String> flags;
    /** Positions by name, so that calls are built and read without searching a list. */
    private final Map<String, Integer> slotIndex;
    private final Map<String, Integer> scalarIndex;
    private final Map<String, Integer> flagIndex;

    Kernel(String id, Kind kind, String slots, String scalars, String flags) {
        this.id = id;
        this.kind = kind;
        this.slots = words(slots);
        this.scalars = words(scalars);
        this.flags = words(flags);
        this.slotIndex = positions(this.slots);
        this.scalarIndex = positions(this.scalars);
        this.flagIndex = positions(this.flags);
    }

    private static Map<String, Integer> positions(List<String> names) {
        Map<String, Integer> m = new HashMap<>();
        for (int i = 0; i < names.size(); i++) {
            m.put(names.get(i), i);
        }
        return m;
    }

    /** Position of slot role {@code role} in a call, or −1 if the kernel has none. */
    int slotIndex(String role) {
        return slotIndex.getOrDefault(role, -1);
    }

    /** Position of scalar {@code name} in a call, or −1 if the kernel has none. */
    int scalarIndex(String name) {
        return scalarIndex.getOrDefault(name, -1);
    }

    /** Position of flag {@code name} in a call, or −1 if the kernel has none. */
    int flagIndex(String name) {
        return flagIndex.getOrDefault(name, -1);
    }

    private static List<String> words(String names) {
        return names.isBlank() ? List.of() : Arrays.asList(names.trim().split("\\s+"));
    }

    /** The stable id engines and documents know the kernel by. */
    public String id() {
        return id;
    }

    public Kind kind() {
        return kind;
    }

    /** Roles of the state slots the kernel touches, in the order a call lists their indexes. */
    public List<String> slots() {
        return slots;
    }

    /** Names of the float scalars, in the order a call holds them. */
    public List<String> scalars() {
        return scalars;
    }

    /** Names of the flags, in the order a call holds them. */
    public List<String> flags() {
        return flags;
    }

    /** Starts a call of this kernel. */
    public KernelCall.Builder call() {
        return new KernelCall.Builder(this);
    }
}

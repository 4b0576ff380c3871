package dev.optsidecar.server.engine.cuda;

import dev.optsidecar.server.engine.kernel.Kernel;
import dev.optsidecar.server.engine.kernel.KernelCall;

import java.util.List;

/**
 * Kernel calls as the native kernels ({@code src/main/cuda/kernels.h}) take them: per call a code
 * (the kernel's position in the catalogue, which {@link #checkCatalogue} proves the native side
 * shares), its flags as bits in catalogue order, {@link #CALL_SLOTS} slot indexes and
 * {@link #SCALARS} scalars, both in catalogue order.
 */
public record NativeProgram(int[] codes, int[] flags, int[] slots, float[] scalars, int count) {
    /** {@code osc::MAX_SCALARS}: the most scalars a kernel of the catalogue takes. */
    public static final int SCALARS = 12;
    /** {@code osc::MAX_CALL_SLOTS}: the most slot roles a kernel of the catalogue has. */
    public static final int CALL_SLOTS = 3;
    /** {@code osc::MAX_CALLS}: calls one launch runs, so that one launch sees a program's θ before and after. */
    public static final int CALLS_PER_LAUNCH = 16;

    public static NativeProgram of(List<KernelCall> calls) {
        int n = calls.size();
        int[] codes = new int[n];
        int[] flags = new int[n];
        int[] slots = new int[n * CALL_SLOTS];
        float[] scalars = new float[n * SCALARS];
        for (int k = 0; k < n; k++) {
            KernelCall call = calls.get(k);
            Kernel kernel = call.kernel();
            codes[k] = kernel.ordinal();
            List<String> flagNames = kernel.flags();
            for (int f = 0; f < flagNames.size(); f++) {
                if (call.flag(flagNames.get(f))) {
                    flags[k] |= 1 << f;
                }
            }
            List<String> roles = kernel.slots();
            for (int s = 0; s < roles.size(); s++) {
                slots[k * CALL_SLOTS + s] = call.slot(roles.get(s));
            }
            List<String> names = kernel.scalars();
            for (int s = 0; s < names.size(); s++) {
                scalars[k * SCALARS + s] = call.scalar(names.get(s));
            }
        }
        return new NativeProgram(codes, flags, slots, scalars, n);
    }

    /** The Java catalogue in the native library's format: one line per kernel, "id|slots|scalars|flags". */
    static String javaCatalogue() {
        StringBuilder out = new StringBuilder();
        for (Kernel k : Kernel.values()) {
            out.append(k.id()).append('|').append(String.join(" ", k.slots())).append('|')
                    .append(String.join(" ", k.scalars())).append('|').append(String.join(" ", k.flags()))
                    .append('\n');
        }
        return out.toString();
    }

    /**
     * Refuses a native library whose catalogue differs from {@link Kernel}'s in any id, slot,
     * scalar, flag or position: codes, scalars and flags are passed by position.
     */
    public static void checkCatalogue(String nativeCatalogue) {
        String expected = javaCatalogue();
        if (!expected.equals(nativeCatalogue)) {
            throw new IllegalStateException("the native kernels' catalogue differs from Kernel.java's:\nnative:\n"
                    + nativeCatalogue + "java:\n" + expected);
        }
        for (Kernel k : Kernel.values()) {
            if (k.scalars().size() > SCALARS || k.slots().size() > CALL_SLOTS || k.flags().size() > 31) {
                throw new IllegalStateException(k.id() + " does not fit the native call layout");
            }
        }
    }
}

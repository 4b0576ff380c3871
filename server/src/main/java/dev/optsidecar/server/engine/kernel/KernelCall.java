package dev.optsidecar.server.engine.kernel;

import java.util.Arrays;
import java.util.StringJoiner;

/**
 * One kernel applied to one tensor: the kernel, its scalars and flags by the catalogue's order,
 * and the tensor's state-slot index for each of the kernel's slot roles. Immutable data that any
 * engine can run, as {@code torch._fused_adam_(params, grads, ..., lr=, beta1=, ...)} is.
 */
public final class KernelCall {
    private final Kernel kernel;
    private final float[] scalars;
    private final boolean[] flags;
    private final int[] slots;

    private KernelCall(Kernel kernel, float[] scalars, boolean[] flags, int[] slots) {
        this.kernel = kernel;
        this.scalars = scalars;
        this.flags = flags;
        this.slots = slots;
    }

    public Kernel kernel() {
        return kernel;
    }

    /** The scalar named {@code name} in the catalogue. */
    public float scalar(String name) {
        return scalars[index(kernel.scalarIndex(name), "scalar", name)];
    }

    /** The flag named {@code name} in the catalogue. */
    public boolean flag(String name) {
        return flags[index(kernel.flagIndex(name), "flag", name)];
    }

    /** The tensor's state-slot index that plays role {@code role}. */
    public int slot(String role) {
        return slots[index(kernel.slotIndex(role), "slot", role)];
    }

    /** The same call with its slot roles bound to other slot indexes (a shadow or a slot moved). */
    public KernelCall withSlots(int... slotIndexes) {
        return new KernelCall(kernel, scalars, flags, checkedSlots(kernel, slotIndexes));
    }

    private int index(int i, String what, String name) {
        if (i < 0) {
            throw new IllegalArgumentException(kernel.id() + " has no " + what + " '" + name + "'");
        }
        return i;
    }

    private static int[] checkedSlots(Kernel kernel, int[] slots) {
        if (slots.length != kernel.slots().size()) {
            throw new IllegalArgumentException(kernel.id() + " takes slots " + kernel.slots() + ", got "
                    + Arrays.toString(slots));
        }
        return slots.clone();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof KernelCall c && kernel == c.kernel && Arrays.equals(scalars, c.scalars)
                && Arrays.equals(flags, c.flags) && Arrays.equals(slots, c.slots);
    }

    @Override
    public int hashCode() {
        return ((kernel.hashCode() * 31 + Arrays.hashCode(scalars)) * 31 + Arrays.hashCode(flags)) * 31
                + Arrays.hashCode(slots);
    }

    @Override
    public String toString() {
        StringJoiner j = new StringJoiner(", ", kernel.id() + "(", ")");
        for (int i = 0; i < scalars.length; i++) {
            j.add(kernel.scalars().get(i) + "=" + scalars[i]);
        }
        for (int i = 0; i < flags.length; i++) {
            j.add(kernel.flags().get(i) + "=" + flags[i]);
        }
        for (int i = 0; i < slots.length; i++) {
            j.add(kernel.slots().get(i) + "@" + slots[i]);
        }
        return j.toString();
    }

    /** Collects a call's values by name; {@link #build} checks every one was given. */
    public static final class Builder {
        private final Kernel kernel;
        private final float[] scalars;
        private final boolean[] flags;
        private final boolean[] scalarSet;
        private final boolean[] flagSet;
        private int[] slots;

        Builder(Kernel kernel) {
            this.kernel = kernel;
            this.scalars = new float[kernel.scalars().size()];
            this.flags = new boolean[kernel.flags().size()];
            this.scalarSet = new boolean[scalars.length];
            this.flagSet = new boolean[flags.length];
            this.slots = kernel.slots().isEmpty() ? new int[0] : null;
        }

        public Builder scalar(String name, float value) {
            int i = position(kernel.scalarIndex(name), "scalar", name);
            scalars[i] = value;
            scalarSet[i] = true;
            return this;
        }

        public Builder flag(String name, boolean value) {
            int i = position(kernel.flagIndex(name), "flag", name);
            flags[i] = value;
            flagSet[i] = true;
            return this;
        }

        /** The tensor's slot index for each of the kernel's slot roles, in catalogue order. */
        public Builder slots(int... slotIndexes) {
            slots = checkedSlots(kernel, slotIndexes);
            return this;
        }

        public KernelCall build() {
            for (int i = 0; i < scalarSet.length; i++) {
                if (!scalarSet[i]) {
                    throw new IllegalStateException(kernel.id() + ": scalar " + kernel.scalars().get(i) + " not set");
                }
            }
            for (int i = 0; i < flagSet.length; i++) {
                if (!flagSet[i]) {
                    throw new IllegalStateException(kernel.id() + ": flag " + kernel.flags().get(i) + " not set");
                }
            }
            if (slots == null) {
                throw new IllegalStateException(kernel.id() + ": slots " + kernel.slots() + " not bound");
            }
            return new KernelCall(kernel, scalars.clone(), flags.clone(), slots);
        }

        private int position(int i, String what, String name) {
            if (i < 0) {
                throw new IllegalArgumentException(kernel.id() + " has no " + what + " '" + name + "'");
            }
            return i;
        }
    }
}

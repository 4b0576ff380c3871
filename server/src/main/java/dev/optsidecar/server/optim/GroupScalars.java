package dev.optsidecar.server.optim;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The values of a group's declared scalars, in declaration order; immutable, so a step's plan
 * returns the values after it without touching the ones before. Kept as exact doubles (a count
 * such as Schedule-Free's k is exact up to 2^53).
 */
public final class GroupScalars {
    public static final GroupScalars NONE = new GroupScalars(List.of(), new double[0]);

    private final List<String> names;
    private final double[] values;

    private GroupScalars(List<String> names, double[] values) {
        this.names = names;
        this.values = values;
    }

    /** The declared scalars at their initial values. */
    public static GroupScalars initial(List<GroupScalar> declared) {
        List<String> names = new ArrayList<>(declared.size());
        double[] values = new double[declared.size()];
        for (int i = 0; i < values.length; i++) {
            names.add(declared.get(i).name());
            values[i] = declared.get(i).initial();
        }
        return new GroupScalars(Collections.unmodifiableList(names), values);
    }

    public List<String> names() {
        return names;
    }

    public double get(String name) {
        return values[indexOf(name)];
    }

    /** These scalars with {@code name} set to {@code value}. */
    public GroupScalars with(String name, double value) {
        double[] copy = values.clone();
        copy[indexOf(name)] = value;
        return new GroupScalars(names, copy);
    }

    /** Name to value, in declaration order. */
    public Map<String, Double> asMap() {
        Map<String, Double> m = new LinkedHashMap<>();
        for (int i = 0; i < values.length; i++) {
            m.put(names.get(i), values[i]);
        }
        return m;
    }

    private int indexOf(String name) {
        int i = names.indexOf(name);
        if (i < 0) {
            throw new IllegalArgumentException("no group scalar '" + name + "' (declared: " + names + ")");
        }
        return i;
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof GroupScalars s && names.equals(s.names) && Arrays.equals(values, s.values);
    }

    @Override
    public int hashCode() {
        return names.hashCode() * 31 + Arrays.hashCode(values);
    }

    @Override
    public String toString() {
        return asMap().toString();
    }
}

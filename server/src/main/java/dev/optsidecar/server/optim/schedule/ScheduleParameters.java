package dev.optsidecar.server.optim.schedule;

import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

/**
 * Reads one schedule's parameters from a Struct, checking names, JSON types and ranges; every error
 * is INVALID_ARGUMENT naming {@code <field>.parameters.<name>}. Also builds the Struct that a schedule
 * describes itself with. Struct numbers are doubles, so step counts must be whole numbers.
 */
final class ScheduleParameters {
    /** Step counts must be exact in a double. */
    private static final double MAX_STEPS = 0x1p53;

    private final String field;
    private final String type;
    private final Map<String, Value> values;

    /** Fails on any parameter name that is not in {@code known}. */
    ScheduleParameters(String field, String type, Struct parameters, List<String> known) {
        this.field = field;
        this.type = type;
        this.values = parameters.getFieldsMap();
        for (String name : new TreeSet<>(values.keySet())) {
            if (!known.contains(name)) {
                throw OptError.invalid("%s.parameters.%s: unknown parameter for schedule %s (known: %s)",
                        field, Echo.of(name), type, known.isEmpty() ? "none" : String.join(", ", known));
            }
        }
    }

    /** Fails with "{@code <field>.parameters.<name>: <requirement> (got <got>)}" unless {@code ok}. */
    void check(boolean ok, String name, String requirement, Object got) {
        if (!ok) {
            throw OptError.invalid("%s.parameters.%s: %s (got %s)", field, name, requirement, got);
        }
    }

    boolean has(String name) {
        return values.containsKey(name);
    }

    /** A required finite number. */
    double number(String name) {
        return number(name, required(name));
    }

    /** An optional finite number. */
    double number(String name, double fallback) {
        Value v = values.get(name);
        return v == null ? fallback : number(name, v);
    }

    /** An optional number in [0, 1]. */
    double fraction(String name, double fallback) {
        double x = number(name, fallback);
        check(x >= 0 && x <= 1, name, "must be in [0, 1]", x);
        return x;
    }

    /** A required whole number >= 0. */
    long steps(String name) {
        return steps(name, number(name));
    }

    /** A required non-empty list of whole numbers >= 0. */
    List<Long> stepList(String name) {
        Value v = required(name);
        boolean nonEmptyList = v.getKindCase() == Value.KindCase.LIST_VALUE && v.getListValue().getValuesCount() > 0;
        check(nonEmptyList, name, "must be a non-empty list of whole numbers", describe(v));
        List<Long> out = new ArrayList<>();
        for (int i = 0; i < v.getListValue().getValuesCount(); i++) {
            String item = name + "[" + i + "]";
            out.add(steps(item, number(item, v.getListValue().getValues(i))));
        }
        return List.copyOf(out);
    }

    /** An optional string, one of {@code options}. */
    String choice(String name, String fallback, List<String> options) {
        Value v = values.get(name);
        if (v == null) {
            return fallback;
        }
        check(v.getKindCase() == Value.KindCase.STRING_VALUE && options.contains(v.getStringValue()), name,
                "must be one of " + String.join(", ", options), describe(v));
        return v.getStringValue();
    }

    private Value required(String name) {
        Value v = values.get(name);
        if (v == null) {
            throw OptError.invalid("%s.parameters.%s: required for schedule %s", field, name, type);
        }
        return v;
    }

    private double number(String name, Value v) {
        check(v.getKindCase() == Value.KindCase.NUMBER_VALUE, name, "must be a number", describe(v));
        check(Double.isFinite(v.getNumberValue()), name, "must be finite", v.getNumberValue());
        return v.getNumberValue();
    }

    private long steps(String name, double x) {
        check(x >= 0 && x <= MAX_STEPS && x == Math.rint(x), name, "must be a whole number >= 0", x);
        return (long) x;
    }

    private static String describe(Value v) {
        return switch (v.getKindCase()) {
            case NUMBER_VALUE -> String.valueOf(v.getNumberValue());
            case STRING_VALUE -> "\"" + v.getStringValue() + "\"";
            case BOOL_VALUE -> String.valueOf(v.getBoolValue());
            case LIST_VALUE -> "a list";
            case STRUCT_VALUE -> "an object";
            default -> "null";
        };
    }

    /** A Struct from alternating names and values (Long, Double, String or List of Long). */
    static Struct struct(Object... nameValuePairs) {
        Struct.Builder b = Struct.newBuilder();
        for (int i = 0; i < nameValuePairs.length; i += 2) {
            b.putFields((String) nameValuePairs[i], value(nameValuePairs[i + 1]));
        }
        return b.build();
    }

    private static Value value(Object v) {
        if (v instanceof Number n) {
            return Value.newBuilder().setNumberValue(n.doubleValue()).build();
        }
        if (v instanceof String s) {
            return Value.newBuilder().setStringValue(s).build();
        }
        ListValue.Builder list = ListValue.newBuilder();
        for (Object item : (List<?>) v) {
            list.addValues(value(item));
        }
        return Value.newBuilder().setListValue(list).build();
    }
}

package dev.optsidecar.server.optim;

import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.OptError;

import java.util.Arrays;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * An algorithm's effective hyperparameters: its defaults, overridden by the model's values, then by
 * a group's. Values keep the types of the defaults (Double, Boolean, double[]). Error messages name
 * the field where the bad value came from, e.g. {@code groups[bias].hyperparameters.lr}.
 */
public final class Hyperparameters {
    private final String algorithm;
    private final Map<String, Object> values;
    private final Map<String, String> sources;

    private Hyperparameters(String algorithm, Map<String, Object> values, Map<String, String> sources) {
        this.algorithm = algorithm;
        this.values = values;
        this.sources = sources;
    }

    /**
     * Merges {@code layers} over the definition's defaults.
     *
     * @param layers field path of each layer (e.g. "optimizer.hyperparameters") to its Struct, in order
     */
    public static Hyperparameters merge(AlgorithmDefinition def, Map<String, Struct> layers) {
        Map<String, Object> values = new LinkedHashMap<>(def.defaults());
        Map<String, String> sources = new LinkedHashMap<>();
        for (Map.Entry<String, Struct> layer : layers.entrySet()) {
            for (Map.Entry<String, Value> e : layer.getValue().getFieldsMap().entrySet()) {
                String name = e.getKey();
                String field = layer.getKey() + "." + name;
                Object defaultValue = def.defaults().get(name);
                if (defaultValue == null) {
                    throw OptError.invalid("%s: unknown hyperparameter for %s (known: %s)",
                            Echo.of(field), def.name(), String.join(", ", def.defaults().keySet()));
                }
                values.put(name, convert(field, e.getValue(), defaultValue));
                sources.put(name, field);
            }
        }
        return new Hyperparameters(def.name(), values, sources);
    }

    private static Object convert(String field, Value v, Object like) {
        if (like instanceof Double) {
            if (v.getKindCase() != Value.KindCase.NUMBER_VALUE || !Double.isFinite(v.getNumberValue())) {
                throw OptError.invalid("%s: expected a finite number", field);
            }
            return v.getNumberValue();
        }
        if (like instanceof Boolean) {
            if (v.getKindCase() != Value.KindCase.BOOL_VALUE) {
                throw OptError.invalid("%s: expected true or false", field);
            }
            return v.getBoolValue();
        }
        double[] pattern = (double[]) like;
        if (v.getKindCase() != Value.KindCase.LIST_VALUE || v.getListValue().getValuesCount() != pattern.length) {
            throw OptError.invalid("%s: expected a list of %d numbers", field, pattern.length);
        }
        ListValue list = v.getListValue();
        double[] out = new double[pattern.length];
        for (int i = 0; i < out.length; i++) {
            Value item = list.getValues(i);
            if (item.getKindCase() != Value.KindCase.NUMBER_VALUE || !Double.isFinite(item.getNumberValue())) {
                throw OptError.invalid("%s[%d]: expected a finite number", field, i);
            }
            out[i] = item.getNumberValue();
        }
        return out;
    }

    public double number(String name) {
        return (Double) get(name);
    }

    public boolean flag(String name) {
        return (Boolean) get(name);
    }

    public double[] numbers(String name) {
        return ((double[]) get(name)).clone();
    }

    private Object get(String name) {
        Object v = values.get(name);
        if (v == null) {
            throw new IllegalArgumentException(algorithm + " has no hyperparameter " + name);
        }
        return v;
    }

    /** Fails with INVALID_ARGUMENT naming where {@code name} was set when {@code ok} is false. */
    public void check(boolean ok, String name, String requirement) {
        if (!ok) {
            throw OptError.invalid("%s: %s (got %s)", field(name), requirement, format(values.get(name)));
        }
    }

    /** Where a hyperparameter came from, for error messages. */
    public String field(String name) {
        return sources.getOrDefault(name, "hyperparameters." + name + " (default)");
    }

    /** Common checks shared by the Adam family: lr, eps, betas and weight_decay ranges. */
    void checkAdamFamily() {
        check(number("lr") >= 0, "lr", "must be >= 0");
        check(number("eps") >= 0, "eps", "must be >= 0");
        double[] betas = numbers("betas");
        check(betas[0] >= 0 && betas[0] < 1, "betas", "betas[0] must be in [0, 1)");
        check(betas[1] >= 0 && betas[1] < 1, "betas", "betas[1] must be in [0, 1)");
        check(number("weight_decay") >= 0, "weight_decay", "must be >= 0");
    }

    /** The values as a Struct, for Describe. */
    public Struct toStruct() {
        Struct.Builder b = Struct.newBuilder();
        values.forEach((name, v) -> b.putFields(name, toValue(v)));
        return b.build();
    }

    private static Value toValue(Object v) {
        if (v instanceof Double d) {
            return Value.newBuilder().setNumberValue(d).build();
        }
        if (v instanceof Boolean bool) {
            return Value.newBuilder().setBoolValue(bool).build();
        }
        ListValue.Builder list = ListValue.newBuilder();
        for (double d : (double[]) v) {
            list.addValues(Value.newBuilder().setNumberValue(d));
        }
        return Value.newBuilder().setListValue(list).build();
    }

    private static String format(Object v) {
        return v instanceof double[] a ? Arrays.toString(a) : String.valueOf(v);
    }

    /** Builds a defaults map from alternating names and values. */
    static Map<String, Object> defaults(Object... nameValuePairs) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < nameValuePairs.length; i += 2) {
            m.put((String) nameValuePairs[i], nameValuePairs[i + 1]);
        }
        return java.util.Collections.unmodifiableMap(m);
    }
}

package dev.optsidecar.server.fuzz;

import com.google.protobuf.ByteString;
import com.google.protobuf.ListValue;
import com.google.protobuf.NullValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.proto.v1.View;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.List;
import java.util.SplittableRandom;

/**
 * Adversarial field values for protocol messages: the edges of every numeric type (uint64 read as
 * a negative long, uint32 past int), NaN and Inf, empty, NUL-laden and 10 kB strings, enum numbers
 * the protocol does not define. Every value comes from the one random source, so a seed replays.
 */
final class FuzzValues {
    static final List<String> HYPERPARAMETERS = List.of("lr", "betas", "eps", "weight_decay", "amsgrad",
            "momentum", "dampening", "nesterov", "maximize", "decoupled_weight_decay", "degenerated_to_sgd",
            "warmup_steps", "r", "weight_lr_power", "inner_momentum", "silent_sgd_phase");
    static final List<String> ALGORITHMS = List.of("SGD", "Adam", "AdamW", "RAdam", "RAdam(torch2.x)",
            "RAdam(original)", "SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree");
    static final List<String> SCHEDULES = List.of("constant", "linear_warmup", "cosine", "wsd", "wsd_s", "keras_radam");
    static final List<String> SCHEDULE_PARAMETERS = List.of("warmup_steps", "total_steps", "num_cycles",
            "min_lr_ratio", "stable_steps", "decay_steps", "warmup_type", "decay_type", "checkpoints",
            "warmup_proportion", "min_lr");
    static final List<String> SLOTS = List.of("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer",
            "z", "slow", "ema:0", "ema:0.9", "ema:1");

    final SplittableRandom random;

    FuzzValues(SplittableRandom random) {
        this.random = random;
    }

    boolean chance(double p) {
        return random.nextDouble() < p;
    }

    int below(int n) {
        return random.nextInt(n);
    }

    <T> T pick(List<T> from) {
        return from.get(random.nextInt(from.size()));
    }

    /** A name that is usually wrong in some way; {@code valid} is one of the choices. */
    String name(String valid) {
        return switch (random.nextInt(12)) {
            case 0 -> "";
            case 1 -> "\0";
            case 2 -> valid + "\0";
            case 3 -> "x".repeat(10_000);
            case 4 -> " " + valid;
            case 5 -> "../" + valid;
            case 6 -> "é😀\uFFFF";
            case 7 -> "\uDBFF\uDFFF\u0001";
            case 8 -> Integer.toString(random.nextInt(1000));
            case 9 -> valid.toUpperCase();
            default -> valid;
        };
    }

    /** A uint64 or int64 field's value: its edges (read as unsigned: 2^63, 2^64 − 1) or something small. */
    long anyLong() {
        return switch (random.nextInt(12)) {
            case 0 -> 0;
            case 1 -> 1;
            case 2 -> -1;
            case 3 -> Long.MAX_VALUE;
            case 4 -> Long.MIN_VALUE;
            case 5 -> 1L << 31;
            case 6 -> 1L << 32;
            case 7 -> (1L << 31) - 1;
            case 8 -> random.nextLong();
            default -> random.nextInt(600);
        };
    }

    /** A uint32 field's value: 2^32 − 1 travels as −1, 2^31 as Integer.MIN_VALUE. */
    int anyInt() {
        return switch (random.nextInt(8)) {
            case 0 -> -1;
            case 1 -> Integer.MAX_VALUE;
            case 2 -> Integer.MIN_VALUE;
            case 3 -> random.nextInt();
            default -> random.nextInt(8);
        };
    }

    double anyDouble() {
        return switch (random.nextInt(14)) {
            case 0 -> Double.NaN;
            case 1 -> Double.POSITIVE_INFINITY;
            case 2 -> Double.NEGATIVE_INFINITY;
            case 3 -> -0.0;
            case 4 -> 0;
            case 5 -> Double.MAX_VALUE;
            case 6 -> Double.MIN_VALUE;
            case 7 -> -1;
            case 8 -> 1e300;
            case 9 -> 2;
            default -> random.nextDouble();
        };
    }

    /** A float32 that is usually finite, sometimes NaN (with a payload), ±Inf, subnormal or −0. */
    float anyFloat(double nonFinite) {
        if (chance(nonFinite)) {
            return switch (random.nextInt(4)) {
                case 0 -> Float.NaN;
                case 1 -> Float.POSITIVE_INFINITY;
                case 2 -> Float.NEGATIVE_INFINITY;
                default -> Float.intBitsToFloat(0x7fc0_0000 | random.nextInt(1 << 22) | 1);
            };
        }
        return switch (random.nextInt(10)) {
            case 0 -> -0f;
            case 1 -> Float.MIN_VALUE;
            case 2 -> 3e38f;
            default -> (float) (random.nextDouble() * 2 - 1);
        };
    }

    /** A WireDtype number: mostly a defined one, now and then any int. */
    int wireDtype() {
        return chance(0.8) ? below(3) : anyInt();
    }

    /**
     * {@code n} elements of wire type {@code wire} (0 float32, 1 bfloat16, 2 float16): a 16-bit
     * element is any pattern, its all-ones exponent (Inf or NaN) replaced unless {@code nonFinite}
     * lets it stay.
     */
    ByteString elements(int wire, int n, double nonFinite) {
        if (wire == 0) {
            return floats(n, nonFinite);
        }
        int exponentMask = wire == 1 ? 0x7f80 : 0x7c00;
        ByteBuffer b = ByteBuffer.allocate(n * Short.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < n; i++) {
            int bits = random.nextInt(1 << 16);
            if ((bits & exponentMask) == exponentMask && !chance(nonFinite)) {
                bits &= ~0x4000; // a finite value with the top exponent bit cleared
            }
            b.putShort((short) bits);
        }
        return ByteString.copyFrom(b.array());
    }

    ByteString floats(int n, double nonFinite) {
        ByteBuffer b = ByteBuffer.allocate(n * Float.BYTES).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < n; i++) {
            b.putFloat(anyFloat(nonFinite));
        }
        return ByteString.copyFrom(b.array());
    }

    /** Chunk data of any length: empty, not a multiple of four, or up to a few thousand floats. */
    ByteString anyBytes() {
        return switch (random.nextInt(5)) {
            case 0 -> ByteString.EMPTY;
            case 1 -> floats(random.nextInt(4), 0.1).concat(ByteString.copyFrom(new byte[1 + random.nextInt(3)]));
            default -> floats(random.nextInt(random.nextInt(5000) + 1), 0.2);
        };
    }

    Value anyValue(int depth) {
        int kinds = depth > 1 ? 5 : 7;
        return switch (random.nextInt(kinds)) {
            case 0 -> Value.newBuilder().setNumberValue(anyDouble()).build();
            case 1 -> Value.newBuilder().setStringValue(name(pick(SCHEDULES))).build();
            case 2 -> Value.newBuilder().setBoolValue(random.nextBoolean()).build();
            case 3 -> Value.newBuilder().setNullValue(NullValue.NULL_VALUE).build();
            case 4 -> Value.newBuilder().setNumberValue(random.nextInt(20)).build();
            case 5 -> {
                ListValue.Builder l = ListValue.newBuilder();
                for (int i = random.nextInt(4); i > 0; i--) {
                    l.addValues(anyValue(depth + 1));
                }
                yield Value.newBuilder().setListValue(l).build();
            }
            default -> Value.newBuilder().setStructValue(struct(HYPERPARAMETERS, depth + 1)).build();
        };
    }

    /** Known names with any values, now and then an unknown name. */
    Struct struct(List<String> names, int depth) {
        Struct.Builder s = Struct.newBuilder();
        for (int i = random.nextInt(4); i > 0; i--) {
            s.putFields(chance(0.8) ? pick(names) : name(pick(names)), anyValue(depth));
        }
        return s.build();
    }

    /** A view: a defined kind or a number the enum lacks, any decay, any slot name. */
    View view() {
        View.Builder v = View.newBuilder();
        v.setKindValue(chance(0.85) ? random.nextInt(7) : pick(List.of(7, 99, -1, Integer.MAX_VALUE)));
        if (chance(0.5)) {
            v.setEmaDecay(chance(0.5) ? 0.9 : anyDouble());
        }
        if (chance(0.5)) {
            v.setSlot(chance(0.7) ? pick(SLOTS) : name(pick(SLOTS)));
        }
        return v.build();
    }
}

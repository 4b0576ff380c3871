package dev.optsidecar.server.model;

import dev.optsidecar.proto.v1.WireDtype;
import dev.optsidecar.server.OptError;
import dev.optsidecar.server.engine.WireType;

/** The protocol's WireDtype as the engine's element type. */
public final class WireTypes {
    private WireTypes() {}

    /** {@code requested} checked: a number no WireDtype has is INVALID_ARGUMENT naming {@code field}. */
    public static WireType of(WireDtype requested, int number, String field) {
        return switch (requested) {
            case WIRE_FLOAT32 -> WireType.FLOAT32;
            case WIRE_BFLOAT16 -> WireType.BFLOAT16;
            case WIRE_FLOAT16 -> WireType.FLOAT16;
            case UNRECOGNIZED -> throw OptError.invalid(
                    "%s: %d is not a WireDtype (WIRE_FLOAT32 0, WIRE_BFLOAT16 1, WIRE_FLOAT16 2)", field, number);
        };
    }
}

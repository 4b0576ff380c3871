package dev.optsidecar.server.api;

import dev.optsidecar.client.TensorData;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.server.Echo;
import dev.optsidecar.server.SidecarFixture;
import dev.optsidecar.server.StandardModel;
import io.grpc.Status;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.RegisterExtension;

import java.util.List;

import static dev.optsidecar.server.StatusAssertions.assertStatus;
import static dev.optsidecar.server.TestData.struct;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A name a client sends is quoted in errors cut to 200 characters: echoed whole, a 10 kB name made
 * the status larger than a default client accepts (8 KiB of metadata), which then saw
 * RESOURCE_EXHAUSTED instead of the error.
 */
class LongNamesTest {
    @RegisterExtension
    static final SidecarFixture f = SidecarFixture.onSocket();
    private static final String LONG = "n".repeat(10_000);

    private static void assertShort(Status s) {
        assertTrue(s.getDescription().length() < 600, () -> s.getDescription().length() + " characters");
        assertTrue(s.getDescription().contains("n".repeat(Echo.MAX_CHARS) + "... (10000 characters)"),
                s::getDescription);
    }

    @Test
    void anUnknownModelWithALongNameIsNotFound() {
        assertShort(assertStatus(Status.Code.NOT_FOUND, () -> f.client().describe(LONG), "model: no model named"));
        assertShort(assertStatus(Status.Code.NOT_FOUND, () -> f.client().delete(LONG), "model: no model named"));
    }

    @Test
    void aLongTensorNameIsQuotedShort() {
        ModelSpec spec = ModelSpec.newBuilder().setName("long-tensor")
                .addTensors(StandardModel.tensor(LONG, 2)).addTensors(StandardModel.tensor(LONG, 2))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("SGD").setHyperparameters(struct("lr", 0.1)))
                .build();
        assertShort(assertStatus(Status.Code.INVALID_ARGUMENT, () -> f.client().register(spec,
                List.of(TensorData.of(new float[2]), TensorData.of(new float[2]))), "spec.tensors[1].name"));
    }

    @Test
    void aLongAlgorithmNameIsQuotedShort() {
        ModelSpec spec = ModelSpec.newBuilder().setName("long-algorithm").addTensors(StandardModel.tensor("w", 2))
                .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm(LONG)).build();
        assertShort(assertStatus(Status.Code.INVALID_ARGUMENT,
                () -> f.client().register(spec, List.of(TensorData.of(new float[2]))), "spec.optimizer.algorithm"));
    }

    @Test
    void echoCutsOnlyLongText() {
        assertEquals("short", Echo.of("short"));
        assertEquals("x".repeat(200), Echo.of("x".repeat(200)));
        assertEquals("x".repeat(200) + "... (201 characters)", Echo.of("x".repeat(201)));
        // A surrogate pair straddling the cut is left out whole.
        String s = "x".repeat(199) + "\uD83D\uDE00" + "y";
        assertEquals("x".repeat(199) + "... (202 characters)", Echo.of(s));
    }
}

package dev.optsidecar.server;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import dev.optsidecar.client.OptSidecarClient;
import dev.optsidecar.client.TensorData;
import dev.optsidecar.client.Trainer;
import dev.optsidecar.proto.v1.ModelSpec;
import dev.optsidecar.proto.v1.OptimizerConfig;
import dev.optsidecar.proto.v1.ParamGroup;
import dev.optsidecar.proto.v1.StepResult;
import dev.optsidecar.proto.v1.TensorSpec;
import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;

/** The README's client example, verbatim but for the address, against a real server on a loopback port. */
class ReadmeExampleTest {
    @Test
    void readmeExampleRuns() throws Exception {
        try (SidecarFixture server = SidecarFixture.onSocket(2, 1L << 28).start()) {
            String address = server.target();
            float[] w0;
            StepResult r;
            float[] w;
            // --- README example starts here ---
            try (OptSidecarClient client = OptSidecarClient.connect(address)) {
                w = new float[784 * 10];
                float[] b = new float[10];
                ModelSpec spec = ModelSpec.newBuilder().setName("mnist-linear")
                    .addTensors(TensorSpec.newBuilder().setName("w").addShape(784).addShape(10))
                    .addTensors(TensorSpec.newBuilder().setName("b").addShape(10))
                    .addGroups(ParamGroup.newBuilder().setName("no_decay").addTensors("b")
                        .setHyperparameters(Struct.newBuilder().putFields("weight_decay",
                            Value.newBuilder().setNumberValue(0).build())))
                    .setOptimizer(OptimizerConfig.newBuilder().setAlgorithm("AdamW")
                        .setHyperparameters(Struct.newBuilder()
                            .putFields("lr", Value.newBuilder().setNumberValue(1e-3).build())))
                    .build();
                client.register(spec, List.of(TensorData.of(w), TensorData.of(b)));
                w0 = w.clone();

                try (Trainer trainer = client.trainer("mnist-linear", "worker-0")) {
                    float[] gw = new float[w.length], gb = new float[b.length];
                    Arrays.fill(gw, 0.5f);
                    r = trainer.step(new float[][] {gw, gb}, new float[][] {w, b});
                }
            }
            // --- README example ends here ---
            assertEquals(1, r.getVersion());
            assertEquals(1e-3, r.getGroups(0).getLr());
            assertFalse(Arrays.equals(w0, w));
        }
    }
}

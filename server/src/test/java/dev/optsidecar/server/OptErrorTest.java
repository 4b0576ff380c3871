package dev.optsidecar.server;

import dev.optsidecar.client.ServerError;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** The field and reason an OptError reports when its call site names neither, and the explicit ones. */
class OptErrorTest {
    @Test
    void fieldComesFromTheMessagePrefix() {
        assertEquals("spec.optimizer.hyperparameters.lr", OptError.fieldOf("spec.optimizer.hyperparameters.lr: must be >= 0"));
        assertEquals("spec.name", OptError.fieldOf("spec.name: a model name is required"));
        assertEquals("spec.tensors[1].shape[0]", OptError.fieldOf("spec.tensors[1].shape[0]: tensor 'b' has dimension 0"));
        assertEquals("commit.group_lr[my head]", OptError.fieldOf("commit.group_lr[my head]: learning rate must be finite"));
        assertEquals("kind", OptError.fieldOf("kind: empty StepRequest"));
        assertEquals("chunk.data", OptError.fieldOf("chunk.data for tensor 'b' (index 1): 6 bytes is not ..."));
        assertEquals("commit.no_grad", OptError.fieldOf("commit.no_grad lists tensor 'w', but chunks for it were sent"));
        // Messages that start with a subject, not a field, name none.
        assertEquals("", OptError.fieldOf("step 7: gradient of tensor 'w' is incomplete"));
        assertEquals("", OptError.fieldOf("model 'm': the server is shutting down"));
        assertEquals("", OptError.fieldOf("weights chunk for tensor 'w': elements [0, 4) were already sent"));
        assertEquals("", OptError.fieldOf("the server was started without --state-dir"));
    }

    @Test
    void eachKindHasADefaultReasonAndCallSitesSetTheirOwn() {
        assertEquals(OptError.Reason.INVALID_FIELD, OptError.invalid("spec.name: required").reason());
        assertEquals(OptError.Reason.MODEL_NOT_FOUND, OptError.notFound("model: no model named 'x'").reason());
        assertEquals(OptError.Reason.SHUTTING_DOWN, OptError.unavailable("shutting down").reason());
        assertEquals(OptError.Reason.IO_ERROR, OptError.internal(new java.io.IOException("disk"), "x").reason());
        for (OptError.Kind kind : OptError.Kind.values()) {
            assertNotNull(OptError.Reason.defaultFor(kind), kind::name);
        }

        OptError e = OptError.precondition("step 3 of client 'a': stale")
                .withReason(OptError.Reason.STALE_GRADIENT).with("current_version", 8L).with("model", "m")
                .withField("commit.base_version");
        assertEquals(OptError.Kind.FAILED_PRECONDITION, e.kind());
        assertEquals(OptError.Reason.STALE_GRADIENT, e.reason());
        assertEquals("commit.base_version", e.field());
        assertEquals(Map.of("current_version", "8", "model", "m"), e.metadata());
        assertEquals("step 3 of client 'a': stale", e.getMessage());
        assertThrows(UnsupportedOperationException.class, () -> e.metadata().put("x", "y"));
    }

    /** Clients and readers see the same list of reasons as the server: the Java client's constants and README's table. */
    @Test
    void everyReasonIsKnownToTheJavaClientAndListedInTheReadme() throws Exception {
        String readme = Files.readString(Path.of("..", "README.md"));
        for (OptError.Reason reason : OptError.Reason.values()) {
            assertEquals(reason.name(), ServerError.class.getField(reason.name()).get(null), reason::name);
            assertTrue(readme.contains("| `" + reason.name() + "` |"), () -> reason + " is not in README's Errors table");
        }
    }
}

package dev.optsidecar.client;

import io.grpc.Status;
import org.junit.jupiter.api.Test;

import java.nio.channels.ClosedChannelException;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/** Which failed attempts a Trainer sends again: a lost connection, never a refused step. */
class TrainerRetryTest {
    @Test
    void aLostConnectionIsRetried() {
        assertTrue(Trainer.connectionLost(Status.UNAVAILABLE.asRuntimeException()));
        assertTrue(Trainer.connectionLost(Status.UNKNOWN.withDescription("channel closed")
                .withCause(new ClosedChannelException()).asRuntimeException()));
    }

    @Test
    void aRefusedStepIsNot() {
        assertFalse(Trainer.connectionLost(Status.INVALID_ARGUMENT.withDescription("commit.view: bad").asRuntimeException()));
        assertFalse(Trainer.connectionLost(Status.UNKNOWN.withDescription("something else").asRuntimeException()));
        assertFalse(Trainer.connectionLost(Status.FAILED_PRECONDITION.asRuntimeException()));
    }
}

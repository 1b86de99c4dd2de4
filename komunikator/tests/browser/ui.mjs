// The bundled web client's UI, driven by its data-testid attributes: the
// actions both browser tests take.

export const id = (page, testId) => page.getByTestId(testId);

export async function openMyRoom(page, roomName) {
  await id(page, "my-room").filter({ hasText: roomName }).first().click();
  await id(page, "room-title").filter({ hasText: roomName }).waitFor();
}

export async function send(page, text) {
  await id(page, "message-input").fill(text);
  await id(page, "send-button").click();
}

export async function seesMessage(page, author, text) {
  await id(page, "message").filter({ has: id(page, "message-text").filter({ hasText: text }) })
    .filter({ has: id(page, "message-user").filter({ hasText: author }) }).first().waitFor();
}

// Joins the public room `roomName` from the room list and opens it.
export async function joinListed(page, roomName) {
  const listed = id(page, "public-room").filter({ hasText: roomName });
  await listed.waitFor();
  await listed.getByTestId("join-room").click();
  await openMyRoom(page, roomName);
}

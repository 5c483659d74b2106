// Runs dynalite's own command line (its path is the first argument, the rest are dynalite's options) so that
// a client that disconnects in the middle of a request does not take the server down. dynalite rethrows a
// request's 'error' event (index.js: `req.on('error', function (err) { throw err })`), so one pipeline killed
// while it wrote to DynamoDB killed the local DynamoDB with it (seen in the test runs: "Error: aborted",
// ECONNRESET). DynamoDB itself only drops that request: so does this. Any other error still ends the process.
process.on('uncaughtException', function (err) {
  if (err && err.code === 'ECONNRESET' && err.message === 'aborted') {
    console.error('dynalite: a client disconnected in the middle of its request; request dropped')
    return
  }
  console.error(err)
  process.exit(1)
})
require(process.argv.splice(2, 1)[0])
